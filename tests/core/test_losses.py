"""Each loss of method.md §3 against an explicit scalar-loop reference on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from wilson_ray import losses


def _bce(x: float, t: float) -> float:
    """BCE-with-logits for one scalar, straight from the definition."""
    p = 1.0 / (1.0 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _softmax(values: list[float]) -> list[float]:
    e = [math.exp(v) for v in values]
    return [v / sum(e) for v in e]


def _lse(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_bce_step0_hand_example():
    # one pixel, two classes, label 1: BCE(0.5, 0) + BCE(-1, 1); a second pixel with 255 is ignored
    logits = torch.tensor([[[[0.5, 3.0]], [[-1.0, 2.0]]]])  # [1,2,1,2]
    target = torch.tensor([[[1, 255]]])
    expected = _bce(0.5, 0) + _bce(-1.0, 1)
    assert losses.bce_step0_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_bce_step0_loop_reference():
    b, c, h, w = 2, 3, 2, 3
    logits = torch.randn(b, c, h, w)
    target = torch.randint(0, c, (b, h, w))
    target[0, 0, 0] = 255
    total, count = 0.0, 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(target[i, y, x])
                if lab == 255:
                    continue
                total += sum(_bce(float(logits[i, k, y, x]), float(k == lab)) for k in range(c))
                count += 1
    assert losses.bce_step0_loss(logits, target).item() == pytest.approx(total / count, rel=1e-5)


def _ngwp_reference(z: torch.Tensor, eps: float, gamma: float, lam: float) -> list[list[float]]:
    b, c, h, w = z.shape
    out = []
    for i in range(b):
        pix = [[float(z[i, k, y, x]) for k in range(c)] for y in range(h) for x in range(w)]
        m = [_softmax(p) for p in pix]
        row = []
        for k in range(c):
            mk = [mp[k] for mp in m]
            zk = [p[k] for p in pix]
            ngwp = sum(a * b_ for a, b_ in zip(mk, zk)) / (eps + sum(mk))
            mean = sum(mk) / len(mk)
            row.append(ngwp + (1 - mean) ** gamma * math.log(lam + mean))
        out.append(row)
    return out


def test_ngwp_focal_scores_loop_reference():
    z = torch.randn(2, 4, 2, 3) * 2
    got = losses.ngwp_focal_scores(z, eps=1.0, gamma=3.0, lam=0.01)
    assert got.shape == (2, 4)
    assert torch.allclose(got, torch.tensor(_ngwp_reference(z, 1.0, 3.0, 0.01)), atol=1e-5)
    got = losses.ngwp_focal_scores(z, eps=1e-5, gamma=0.0, lam=0.1)
    assert torch.allclose(got, torch.tensor(_ngwp_reference(z, 1e-5, 0.0, 0.1)), atol=1e-5)


def test_classification_loss_new_classes_only_and_all():
    z = torch.randn(2, 5, 3, 3)  # background + 2 old + 2 new
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    scores = _ngwp_reference(z, 1.0, 3.0, 0.01)
    new = [_bce(scores[i][k], float(labels[i, k - 1])) for i in range(2) for k in (3, 4)]
    fg = [_bce(scores[i][k], float(labels[i, k - 1])) for i in range(2) for k in (1, 2, 3, 4)]
    got = losses.classification_loss(z, labels, num_new=2)
    assert got.item() == pytest.approx(sum(new) / len(new), rel=1e-5)
    got_all = losses.classification_loss(z, labels, num_new=2, all_classes=True)
    assert got_all.item() == pytest.approx(sum(fg) / len(fg), rel=1e-5)


def test_gap_classification_loss():
    z = torch.randn(2, 4, 2, 2)
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    mean = z.mean(dim=(2, 3))
    ref = [_bce(float(mean[i, k]), float(labels[i, k - 1])) for i in range(2) for k in (2, 3)]
    assert losses.gap_classification_loss(z, labels, 2).item() == pytest.approx(sum(ref) / 4, rel=1e-5)


def test_localization_prior_loss_uses_old_channels_and_sigmoid_target():
    z = torch.randn(2, 5, 2, 2, requires_grad=True)
    s_old = torch.randn(2, 3, 2, 2, requires_grad=True)
    zd, sd = z.detach(), s_old.detach()
    ref, n = 0.0, 0
    for i in range(2):
        for k in range(3):
            for y in range(2):
                for x in range(2):
                    t = 1 / (1 + math.exp(-float(sd[i, k, y, x])))
                    ref += _bce(float(zd[i, k, y, x]), t)
                    n += 1
    got = losses.localization_prior_loss(z, s_old)
    assert got.item() == pytest.approx(ref / n, rel=1e-5)
    got.backward()
    assert s_old.grad is None
    assert torch.all(z.grad[:, 3:] == 0)


def test_encoder_distillation_is_mse_over_all_elements():
    f = torch.randn(2, 6, 3, 3, requires_grad=True)
    f_old = torch.randn(2, 6, 3, 3, requires_grad=True)
    got = losses.encoder_distillation_loss(f, f_old)
    assert got.item() == pytest.approx(((f - f_old) ** 2).sum().item() / f.numel(), rel=1e-5)
    got.backward()
    assert f_old.grad is None and f.grad is not None


def test_segmentation_loss_weighted_images():
    s = torch.randn(3, 4, 2, 2)
    q = torch.rand(3, 4, 2, 2)
    weight = torch.tensor([1.0, 0.0, 1.0])
    per_image = []
    for i in range(3):
        total = sum(
            _bce(float(s[i, k, y, x]), float(q[i, k, y, x])) for k in range(4) for y in range(2) for x in range(2)
        )
        per_image.append(total / 4)
    expected = (per_image[0] + per_image[2]) / (2 + 1e-5)
    assert losses.segmentation_loss(s, q, weight).item() == pytest.approx(expected, rel=1e-5)


def _sss_reference(z, refined, labels, fg=0.6, bg=0.7, low=0.2) -> float:
    z = z.detach()
    b, c, h, w = refined.shape
    total = 0.0
    for i in range(b):
        thr = [max((bg if k == 0 else fg) * float(refined[i, k].max()), low) for k in range(c)]
        gt = {}
        for y in range(h):
            for x in range(w):
                hits = [k for k in range(c) if float(refined[i, k, y, x]) > thr[k]]
                if len(hits) == 1:
                    gt[(y, x)] = hits[0]
        counts = [sum(1 for v in gt.values() if v == k) for k in range(c)]
        n = sum(counts)
        present = sum(1 for v in counts if v > 0)
        if present != int(labels[i].sum()) + 1:
            continue
        loss = 0.0
        for (y, x), k in gt.items():
            logp = float(z[i, k, y, x]) - _lse([float(z[i, j, y, x]) for j in range(c)])
            loss += -logp * (n - counts[k]) / (1 + n)
        total += loss / (h * w)
    return total / b


def test_self_supervised_loss_hand_case():
    # 1 image, 3 classes (bkg, old, new), 1x4 pixels. labels: new class present.
    refined = torch.tensor(
        [[[[0.9, 0.1, 0.8, 0.1]], [[0.0, 0.0, 0.0, 0.0]], [[0.1, 0.9, 0.85, 0.15]]]]
    )  # bkg thr 0.63 -> pixels 0,2; new thr 0.54 -> pixels 1,2; pixel 2 ambiguous; pixel 3 unassigned
    labels = torch.tensor([[0.0, 1.0]])
    z = torch.randn(1, 3, 1, 4)
    # assigned: pixel0 -> bkg, pixel1 -> new; N = 2, N_bkg = N_new = 1, weights 1/3 each
    lp0 = float(torch.log_softmax(z, 1)[0, 0, 0, 0])
    lp1 = float(torch.log_softmax(z, 1)[0, 2, 0, 1])
    expected = (-lp0 / 3 - lp1 / 3) / 4
    got = losses.self_supervised_loss(z, refined, labels)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(_sss_reference(z, refined, labels), rel=1e-5)


def test_self_supervised_loss_loop_reference_and_gate():
    b, c, h, w = 4, 4, 3, 4
    z = torch.randn(b, c, h, w, requires_grad=True)
    refined = torch.rand(b, c, h, w)
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    refined[:, 1:] *= labels[:, :, None, None]
    got = losses.self_supervised_loss(z, refined, labels)
    assert got.item() == pytest.approx(_sss_reference(z, refined, labels), rel=1e-5, abs=1e-7)
    got.backward()
    assert z.grad is not None
    # an image that cannot pass the gate contributes 0 but still counts in the mean over B
    gated = torch.zeros(1, c, h, w)
    gated[0, 0] = 1.0  # only background assigned, but one label present
    assert losses.self_supervised_loss(z[:1], gated, labels[:1]).item() == 0.0


def test_unbiased_ce_loop_reference():
    b, c, h, w, num_old = 2, 5, 2, 2, 3
    s = torch.randn(b, c, h, w)
    target = torch.tensor([[[0, 1], [3, 4]], [[2, 255], [4, 0]]])
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == 255:
                    continue
                vals = [float(s[i, k, y, x]) for k in range(c)]
                den = _lse(vals)
                if t < num_old:
                    total += -(_lse(vals[:num_old]) - den)
                else:
                    total += -(vals[t] - den)
    expected = total / (b * h * w)  # MiB: mean over all pixels, ignored ones included
    assert losses.unbiased_ce_loss(s, target, num_old).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_unbiased_kd_loop_reference(temperature):
    b, c, c_old, h, w = 2, 5, 3, 2, 2
    s = torch.randn(b, c, h, w)
    s_old = torch.randn(b, c_old, h, w)
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                st = [float(s[i, k, y, x]) / temperature for k in range(c)]
                q = _softmax([float(s_old[i, k, y, x]) / temperature for k in range(c_old)])
                den = _lse(st)
                log_bkg = _lse([st[0]] + st[c_old:]) - den
                pix = q[0] * log_bkg + sum(q[k] * (st[k] - den) for k in range(1, c_old))
                total += -pix / c_old
    expected = total / (b * h * w)
    assert losses.unbiased_kd_loss(s, s_old, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_loop_reference():
    b, c, c_old, h, w = 2, 5, 3, 1, 2
    s = torch.randn(b, c, h, w)
    s_old = torch.randn(b, c_old, h, w)
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                st = [float(s[i, k, y, x]) for k in range(c_old)]
                q = _softmax([float(s_old[i, k, y, x]) for k in range(c_old)])
                den = _lse(st)
                total += sum(q[k] * (st[k] - den) for k in range(c_old))
    expected = -total / (b * h * w * c_old)
    assert losses.kd_loss(s, s_old).item() == pytest.approx(expected, rel=1e-5)
    # identical logits on the old channels minimise the KL part; the loss is then the teacher entropy
    same = torch.cat([s_old, torch.randn(b, 2, h, w)], dim=1)
    entropy = -(torch.softmax(s_old, 1) * torch.log_softmax(s_old, 1)).mean()
    assert losses.kd_loss(same, s_old).item() == pytest.approx(entropy.item(), rel=1e-5)
