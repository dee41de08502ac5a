"""PLOP (baselines.md §1): POD pooling, entropy and thresholds (released quirk vs exact median), pseudo-labels,
the backbone's intermediate maps, the cached threshold pass and the separate CE step-0 cache key."""

import math

import pytest
import torch
import torch.nn.functional as F

from wilson_ray.config import resolve_config
from wilson_ray.methods import plop
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.pass_cache import cached_pass
from wilson_ray.step_key import step_key


def _hand_pod(x, scales):
    """Loop version of local POD: for each scale, for each tile (row-major), width-pooled then height-pooled."""
    x = x.pow(2)
    _, c, h, w = x.shape
    rows, cols = [], []
    for s in scales:
        th, tw = h // s, w // s
        wp, hp = [], []
        for ch in range(c):
            for i in range(s):
                for r in range(th):
                    for j in range(s):
                        wp.append(x[0, ch, i * th + r, j * tw : (j + 1) * tw].mean())
            for i in range(s):
                for j in range(s):
                    for col in range(tw):
                        hp.append(x[0, ch, i * th : (i + 1) * th, j * tw + col].mean())
        rows.append(torch.stack(wp))
        cols.append(torch.stack(hp))
    return torch.cat([t for pair in zip(rows, cols) for t in pair])


def test_pod_embedding_matches_the_tile_loops():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4) / 10
    emb = plop.pod_embedding(x, [1, 2])
    hand = _hand_pod(x, [1, 2])
    assert emb.shape == (1, 2 * (4 + 4) + 2 * (8 + 8))
    assert set(emb[0].tolist()) == set(hand.tolist()) and torch.allclose(emb[0].sort().values, hand.sort().values)
    # scale 1, channel 0, first row: mean of 0, .01, .04, .09
    assert emb[0, 0].item() == pytest.approx((0 + 0.01 + 0.04 + 0.09) / 4)
    # a 6x6 map at scale 4: tiles of side 1 over the first 4x4 pixels (the released slicing drops the rest)
    y = torch.randn(1, 1, 6, 6)
    assert torch.equal(plop.pod_embedding(y, [4]), plop.pod_embedding(y[..., :4, :4], [4]))


def test_pod_loss_is_the_batch_mean_of_embedding_distances():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.ones(2, 1, 2, 2)
    b[1] *= 2  # squared: 4
    # scale 1 only: 2 width-pooled + 2 height-pooled entries per image, each |0 - v²|
    loss = plop.pod_loss(b, a, [1])
    assert loss.item() == pytest.approx((math.sqrt(4 * 1.0) + math.sqrt(4 * 16.0)) / 2)
    assert plop.pod_loss(a, a, [1, 2, 4]).item() == 0.0


def test_logits_absorb_new_channels_into_background():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).view(1, 5, 1, 1)
    out = plop.absorbed_logits(s, num_old=3)
    assert out.flatten().tolist() == [1.0 + 4.0 + 5.0, 2.0, 3.0]


def test_entropy_as_coded_is_bounded_by_one_over_c_old_log_c():
    p = torch.full((1, 16, 1, 1), 1 / 16)
    assert plop.entropy(p, 21).item() == pytest.approx(1 / (16 * math.log(21)))  # 0.0205 for 15-5
    confident = torch.zeros(1, 16, 1, 1)
    confident[0, 3] = 1
    assert plop.entropy(confident, 21).item() == pytest.approx(0.0, abs=1e-6)


def test_released_threshold_quirk_against_the_exact_median():
    hist = torch.zeros(100)
    hist[0], hist[1] = 10, 30  # 40 pixels, half = 20
    # released: bin 0 holds 10 < 20; the running sum adds the index 0, so bin 1 qualifies: 0.01 + 20/30 * 0.01
    assert plop.released_threshold(hist) == pytest.approx(0.01 + 20 / 30 * 0.01)
    # exact: 10 pixels below bin 1, so the median is 10/30 of the way into bin 1
    assert plop.median_threshold(hist, 1.0) == pytest.approx(0.01 + 10 / 30 * 0.01)
    flat = torch.zeros(100)
    flat[:3] = 4  # no bin holds half of 12 and the index sums skip past it: no bin qualifies
    assert plop.released_threshold(flat) == math.inf
    assert plop.median_threshold(flat, 1.0) == pytest.approx(0.015)
    hists = torch.stack([hist, torch.zeros(100), flat])
    tau = plop.thresholds_from_histograms(hists, "released", 0.001, 1.0)
    assert tau[0].item() == pytest.approx(0.016667, abs=1e-5)
    assert tau[1].item() == pytest.approx(0.001)  # never predicted: the floor
    assert tau[2].item() == math.inf


def test_pseudo_labels_on_background_pixels_and_image_weight():
    masks = torch.tensor([[[0, 0], [16, 0]]])
    s_old = torch.zeros(1, 16, 2, 2)
    s_old[0, 3, 0, 0] = 20.0  # confident class 3: accepted
    s_old[0, 0, 1, 1] = 20.0  # confident background: accepted as 0
    # (0, 1) uniform: u = 1/(16 log 21) > τ: ignored; (1, 0) is a new-class pixel and keeps its label
    tau = torch.full((16,), 0.01)
    labels, nu = plop.pseudo_label(masks, s_old, tau, 21)
    assert labels.tolist() == [[[3, 255], [16, 0]]]
    assert nu.item() == pytest.approx(2 / 3, abs=1e-5)


def test_backbone_exposes_the_residual_sums_of_each_stage():
    torch.manual_seed(0)
    model = build_segmenter("small", [16, 5], small_width=8, head_channels=16).eval()
    x = torch.randn(1, 3, 64, 64)
    out = model(x, upsample=False, maps=True)
    assert [tuple(m.shape[1:]) for m in out.maps] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 4, 4), (16, 4, 4)]
    assert torch.allclose(F.leaky_relu(out.maps[3], 0.01), out.features)  # the last sum, activated, is the body
    plain = model(x, upsample=False)
    assert plain.maps is None and torch.allclose(plain.logits, out.logits)


def test_threshold_pass_is_cached_per_step(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"thresholds": torch.tensor([0.1, 0.2])}

    a = cached_pass(tmp_path, "key-step1", "plop-thresholds", {"mode": "released"}, compute)
    b = cached_pass(tmp_path, "key-step1", "plop-thresholds", {"mode": "released"}, compute)
    assert len(calls) == 1 and torch.equal(a["thresholds"], b["thresholds"])
    cached_pass(tmp_path, "key-step1", "plop-thresholds", {"mode": "median"}, compute)
    assert len(calls) == 2


def test_ce_step0_is_cached_apart_from_the_bce_step0_and_shared_by_plop_and_sdr():
    keys = {m: step_key(resolve_config("demo", method=m), 0) for m in ("wilson", "mib", "plop", "sdr")}
    assert keys["wilson"] == keys["mib"] and keys["plop"] == keys["sdr"] and keys["plop"] != keys["wilson"]
    swept = resolve_config("demo", method="plop", overrides={"method.pod_weight": 0.1})
    assert step_key(swept, 0) == keys["plop"] and step_key(swept, 1) != step_key(
        resolve_config("demo", method="plop"), 1
    )


def test_plop_search_space_loads_with_the_published_defaults_first():
    from pathlib import Path

    from wilson_ray.orchestration.search_space import load_search_space

    space = load_search_space(Path(__file__).resolve().parents[2] / "search_spaces" / "plop.yaml")
    assert space.base_config().method.name == "plop" and len(space.params) >= 4
