"""SEAM learner (baselines.md §4): its losses against hand-computed values, PCM, the CRF wrapper and seeds,
AffinityNet's loss and the random walk on toy inputs, and a short run on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wilson_ray.config import ModelConfig
from wilson_ray.methods.base import Batch
from wilson_ray.weak import affinity as aff
from wilson_ray.weak import seam
from wilson_ray.weak.crf import crf_available, dense_crf

needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 (the 'wsss' extra) is not installed")


# --- the PCM ------------------------------------------------------------------------------------------------------
def test_pcm_affinity_columns_sum_to_one_with_hand_values():
    # 3 pixels, 2 channels: (1,0), (0,1), (1,1) -> after L2 norm the dot products are 1, 0, 1/√2
    f = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)
    a = seam.pcm_affinity(f)[0]
    r = 1 / math.sqrt(2)
    raw = torch.tensor([[1.0, 0.0, r], [0.0, 1.0, r], [r, r, 1.0]])
    expected = raw / (raw.sum(0, keepdim=True) + 1e-5)
    assert torch.allclose(a, expected, atol=1e-4)
    assert torch.allclose(a.sum(0), torch.ones(3), atol=1e-4)
    # ĉ·A: pixel j receives Σ_i ĉ_i A_ij
    seed = torch.tensor([[1.0, 0.0, 0.0]]).view(1, 1, 1, 3)
    out = seam.pcm_refine(seed, a[None])
    assert torch.allclose(out.flatten(), expected[0], atol=1e-5)


def test_pcm_seed_keeps_top_foreground_and_sets_background():
    # channels: bg, c1, c2 over 2 pixels; per-channel max-normalised: c1 -> [1, .5], c2 -> [.25, 1]
    cam = torch.tensor([[9.0, 9.0], [2.0, 1.0], [1.0, 4.0]]).view(1, 3, 1, 2)
    s = seam.pcm_seed(cam)[0, :, 0]
    assert torch.allclose(s[1], torch.tensor([1.0, 0.0]), atol=1e-4)  # c1 kept only where it is the top
    assert torch.allclose(s[2], torch.tensor([0.0, 1.0]), atol=1e-4)
    assert torch.allclose(s[0], torch.tensor([0.0, 0.0]), atol=1e-4)  # bg = 1 − max fg


# --- the losses ---------------------------------------------------------------------------------------------------
def test_max_norm_is_relu_then_min_max():
    p = torch.tensor([-1.0, 0.0, 1.0, 2.0, 4.0]).view(1, 1, 1, 5)
    out = seam.max_norm(p).flatten()
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0]), atol=1e-4)


def test_min_pool_loss_hand_values():
    # foreground channels: c1 labelled, c2 not (its large values must be masked out)
    pcm = torch.zeros(1, 3, 1, 4)
    pcm[0, 1, 0] = torch.tensor([0.5, 0.3, 0.1, 0.9])
    pcm[0, 2, 0] = 5.0
    labels = torch.tensor([[1.0, 0.0]])
    assert seam.min_pool_loss(pcm, labels, 0.25).item() == pytest.approx(0.1, abs=1e-6)  # k = 1: the lowest
    assert seam.min_pool_loss(pcm, labels, 0.5).item() == pytest.approx(0.2, abs=1e-6)  # k = 2: (0.1 + 0.3)/2
    pcm[0, 1, 0, 2] = -0.4  # ReLU: a negative lowest score costs nothing
    assert seam.min_pool_loss(pcm, labels, 0.25).item() == pytest.approx(0.0, abs=1e-6)


def test_er_loss_hand_values():
    # same spatial size, so the resize is the identity; 1 foreground class, 4 pixels
    cam_x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 4.0]]).view(1, 2, 2, 2)
    cam_s = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 4.0]]).view(1, 2, 2, 2)
    y = torch.tensor([[1.0, 1.0]])
    # N(x) = [0, .25, .5, 1], N(x') = [0, .5, .5, 1] -> mean |Δ| = 0.25 / 4
    assert seam.er_loss(cam_x, cam_s, y).item() == pytest.approx(0.0625, abs=1e-4)
    y0 = torch.tensor([[1.0, 0.0]])  # an absent class contributes nothing
    assert seam.er_loss(cam_x, cam_s, y0).item() == pytest.approx(0.0, abs=1e-7)


def test_top_foreground_and_ecr_top_k():
    other = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.5, 0.0, 1.0], [0.1, 0.3, 0.6, 0.0, 0.0]])
    m = seam.top_foreground(other.view(1, 3, 1, 5))[0, :, 0]
    assert torch.allclose(m[0], torch.tensor([0.8, 0.1, 0.4, 1.0, 0.0]))
    assert torch.allclose(m[1], torch.tensor([0.2, 0.9, 0.0, 0.0, 1.0]))
    assert torch.allclose(m[2], torch.tensor([0.0, 0.0, 0.6, 0.0, 0.0]))
    pcm = torch.zeros(1, 3, 1, 5)
    # |M − 0| = M; (1+K)·h·w = 15 entries, top 20 % -> k = 3 largest: 1.0, 1.0, 0.9
    assert seam.ecr_loss(pcm, other.view(1, 3, 1, 5), 0.2).item() == pytest.approx(2.9 / 3, abs=1e-6)
    # top 40 % -> k = 6: 1.0, 1.0, 0.9, 0.8, 0.6, 0.4
    assert seam.ecr_loss(pcm, other.view(1, 3, 1, 5), 0.4).item() == pytest.approx(4.7 / 6, abs=1e-6)


def test_ecr_does_not_backpropagate_into_the_target():
    other = torch.rand(1, 3, 2, 2, requires_grad=True)
    pcm = torch.rand(1, 3, 2, 2, requires_grad=True)
    seam.ecr_loss(pcm, other).backward()
    assert other.grad is None and pcm.grad is not None


def test_classification_loss_ignores_background_channel():
    cam = torch.zeros(1, 3, 2, 2)
    cam[0, 0] = 100.0  # background logits never enter the soft margin
    loss = seam.classification_loss(cam, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_losses_and_momentum_switch_on_a_tiny_net():
    learner = seam.SeamLearner(seam.SeamParams(), num_classes=2)
    net = learner.build_net(ModelConfig(backbone="small", output_stride=8, small_width=8))
    batch = Batch(torch.randn(2, 3, 48, 48), torch.empty(0), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    terms = learner.losses(net, batch, 0)
    assert set(terms) == {"cls", "min", "er", "ecr"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert net.classifier.weight.grad.abs().sum() > 0 and net.f9.weight.grad.abs().sum() > 0
    # the PCM reads detached backbone features: its loss alone leaves the backbone without gradient
    net.zero_grad()
    cam, pcm = net(batch.images)
    pcm.sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.backbone_parameters())
    groups = learner.param_groups(net, 0.01, 5e-4)
    assert {g["name"]: g["lr"] for g in groups} == {"backbone_w": 0.01, "backbone_b": 0.02, "new_w": 0.1}
    assert all("momentum" not in g for g in groups)
    quirk = seam.SeamLearner(seam.SeamParams(momentum_quirk=True), 2).param_groups(net, 0.01, 5e-4)
    assert all(g["momentum"] == 5e-4 for g in quirk)


def test_normalise_cams_min_max_per_class():
    summed = torch.tensor([[[-1.0, 0.0], [2.0, 4.0]]])
    out = seam.normalise_cams(summed)[0].flatten()
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.5, 1.0]), atol=1e-4)


# --- AffinityNet and the random walk ------------------------------------------------------------------------------
def test_pair_offsets_radius_5_matches_psa():
    offsets = aff.pair_offsets(5)
    assert len(offsets) == 34 and (0, 1) in offsets and (4, 2) in offsets and (4, 3) not in offsets
    assert all((-dy, -dx) not in offsets for dy, dx in offsets)  # each unordered pair once


def test_affinity_labels_and_loss_hand_values():
    seeds = torch.tensor([[0, 0, 1, 1, 255]])  # 1×5 map
    src, dst = aff.pair_indices(1, 5, 2)  # radius 2: horizontal neighbours only
    assert src.tolist() == [0, 1, 2, 3] and dst.tolist() == [1, 2, 3, 4]
    bg, fg, neg = aff.affinity_labels(seeds.view(1, 1, 5), src, dst)
    assert bg.tolist() == [[True, False, False, False]]
    assert fg.tolist() == [[False, False, True, False]]
    assert neg.tolist() == [[False, True, False, False]]  # the pair with 255 is in none
    a = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    terms = aff.affinity_loss(a, bg, fg, neg)
    assert terms["aff_bg"].item() == pytest.approx(-math.log(0.5 + 1e-5) / 4, rel=1e-4)
    assert terms["aff_fg"].item() == pytest.approx(-math.log(0.9 + 1e-5) / 4, rel=1e-4)
    assert terms["aff_neg"].item() == pytest.approx(-math.log(1 + 1e-5 - 0.1) / 2, rel=1e-4)


def test_random_walk_fills_each_region_from_one_seed():
    h, w = 6, 8
    region = torch.zeros(h, w, dtype=torch.long)
    region[:, 4:] = 1  # two regions: left and right halves
    feats = (region.float() * 10.0).expand(1, 4, h, w)  # AffinityNet features: constant within a region
    src, dst = aff.pair_indices(h, w, 5)
    a = aff.pair_affinities(feats, src, dst)[0]
    assert a.max() == pytest.approx(1.0) and a.min() < 1e-4
    t = aff.transition_matrix(a, src, dst, h * w, beta=8)
    assert torch.allclose(t.sum(0), torch.ones(h * w), atol=1e-5)
    scores = torch.zeros(2, h, w)
    scores[0, 2, 1] = 1.0  # one seed pixel per class, one in each region
    scores[1, 3, 6] = 1.0
    walked = aff.random_walk(scores, t, logt=6)
    assert torch.equal(walked.argmax(0), region)
    assert (walked > 0).all()  # the seeds' mass reached every pixel of their region


# --- the CRF --------------------------------------------------------------------------------------------------------
@needs_crf
def test_dense_crf_snaps_a_noisy_labelling_to_the_image_edge():
    h, w = 20, 20
    image = torch.zeros(3, h, w)
    image[:, :, 10:] = 255.0
    scores = torch.full((2, h, w), 0.5)
    scores[0, :, :3], scores[1, :, :3] = 0.9, 0.1  # confident class 0 on the left border only
    scores[0, :, 17:], scores[1, :, 17:] = 0.1, 0.9  # confident class 1 on the right border only
    out = dense_crf(image, scores, iterations=10)
    assert out.shape == (2, h, w) and np.allclose(out.sum(0), 1.0, atol=1e-4)
    expected = np.zeros((h, w), dtype=np.int64)
    expected[:, 10:] = 1
    assert (out.argmax(0) == expected).all()


@needs_crf
def test_crf_seeds_mark_confident_foreground_background_and_unsure():
    h, w = 24, 24
    image = torch.full((3, h, w), 30.0)
    image[:, 6:18, 6:18] = 220.0  # a bright square object
    cam = torch.zeros(1, h, w)
    # a weak CAM over the object: bg (1 − 0.15)^4 = 0.52 beats it, (1 − 0.15)^24 = 0.02 does not
    cam[0, 6:18, 6:18] = 0.15
    cam[0, 10:14, 10:14] = 1.0  # strong at its centre
    seeds = seam.crf_seeds(image, cam, 4.0, 24.0)
    assert seeds[12, 12] == 1  # strong CAM: foreground even with the strong (α = 4) background
    assert seeds[1, 1] == 0  # far from the object: background even with the weak (α = 24) one
    assert seeds[7, 7] == 255  # weak CAM: unsure
    assert set(seeds.unique().tolist()) == {0, 1, 255}


def test_missing_crf_library_is_one_clear_line_before_training(monkeypatch):
    import sys

    from wilson_ray.errors import UserError
    from wilson_ray.weak import ss

    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pydensecrf2 .*wilson-ray\[wsss\]") as err:
        seam.SeamLearner(seam.SeamParams(), 2)
    assert "\n" not in str(err.value)
    seam.SeamLearner(seam.SeamParams(mask_mode="threshold"), 2)  # the simpler variant needs no CRF
    with pytest.raises(UserError, match="pydensecrf2"):
        ss.SSLearner(ss.SSParams(crf=True), 2)
    ss.SSLearner(ss.SSParams(), 2)
