"""Pseudo-label rules of method.md §3.5 / §3.7 step 1 and the CAM baseline targets."""

from __future__ import annotations

import pytest
import torch

from wilson_ray.pamr import denormalize_and_resize, pamr
from wilson_ray.pseudo_labels import cam_pseudo_labels, localizer_refined_masks, soft_pseudo_labels

# C = 5: background, old classes 1-2, new classes 3-4. labels cover classes 1..4.
C_OLD = 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(b=2, h=3, w=4):
    z_bar = torch.randn(b, 5, h, w) * 2
    s_old = torch.randn(b, C_OLD, h, w)
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[:b]
    return z_bar, labels, s_old


def test_soft_pseudo_labels_rules():
    z_bar, labels, s_old = _inputs()
    alpha = 0.5
    q_hat, weight = soft_pseudo_labels(z_bar, labels, s_old, alpha=alpha)
    m = torch.softmax(z_bar, 1)
    m[:, 1:] *= labels[:, :, None, None]  # masking after the softmax, no renormalisation
    hard = (m == m.amax(1, keepdim=True)).float()
    q = alpha * hard + (1 - alpha) * m
    p_old = torch.sigmoid(s_old)
    assert torch.allclose(q_hat[:, 0], torch.minimum(p_old[:, 0], q[:, 0]))  # min background
    assert torch.allclose(q_hat[:, 1:3], p_old[:, 1:3])  # old classes from the old model
    assert torch.allclose(q_hat[:, 3:], q[:, 3:])  # new classes from the localizer
    assert torch.all(q_hat[0, 4] == 0)  # absent new class of image 0
    assert torch.equal(weight, torch.ones(2))
    # the argmax never lands on an old class or an absent class
    assert torch.all(hard[:, 1:3] == 0) and torch.all(hard[0, 4] == 0)


def test_background_interpolation_beta():
    z_bar, labels, s_old = _inputs()
    q_min, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.3)
    q_b, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.3, bkg_beta=0.25)
    q1, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.3, bkg_beta=1.0)  # pure localizer background
    q0, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.3, bkg_beta=0.0)  # pure old-model background
    assert torch.allclose(q0[:, 0], torch.sigmoid(s_old[:, 0]))
    assert torch.allclose(q_b[:, 0], 0.75 * q0[:, 0] + 0.25 * q1[:, 0])
    assert torch.allclose(q_min[:, 0], torch.minimum(q0[:, 0], q1[:, 0]))
    assert torch.allclose(q_b[:, 1:], q_min[:, 1:])


def test_alpha_one_gives_hard_labels_and_validity_weight():
    z_bar, labels, s_old = _inputs(b=2)
    z_bar[0, 3] = 10.0  # image 0: its present class wins everywhere
    z_bar[1, 0] = 10.0  # image 1: background wins everywhere -> present classes get no mass
    q_hat, weight = soft_pseudo_labels(z_bar, labels, s_old, alpha=1.0)
    assert set(q_hat[:, 3:].unique().tolist()) <= {0.0, 1.0}
    assert torch.all(q_hat[0, 3] == 1)
    assert torch.equal(weight, torch.tensor([1.0, 0.0]))


def test_ties_all_get_the_hard_label():
    z_bar = torch.zeros(1, 5, 1, 2)
    z_bar[0, 3] = 1.0
    z_bar[0, 4] = 1.0  # classes 3 and 4 tie and are both present
    labels = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    s_old = torch.full((1, C_OLD, 1, 2), 5.0)
    q_hat, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=1.0)
    assert torch.all(q_hat[0, 3] == 1) and torch.all(q_hat[0, 4] == 1)
    assert torch.all(q_hat[0, 0] == 0)  # min(σ(5), 0)


def test_temperature():
    z_bar, labels, s_old = _inputs()
    q_t1, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.0, temperature=1.0)
    m = torch.softmax(z_bar, 1)
    assert torch.allclose(q_t1[:, 3:], m[:, 3:] * labels[:, 2:, None, None])
    q_hot, _ = soft_pseudo_labels(z_bar, labels, s_old, alpha=0.0, temperature=1e4)
    # very high T: m̄ ≈ 1/C on every channel that survives the mask
    present = q_hot[1, 3:]
    assert torch.allclose(present, torch.full_like(present, 0.2), atol=1e-3)


def test_localizer_refined_masks():
    z_bar, labels, _ = _inputs(h=6, w=6)
    images = torch.randn(2, 3, 24, 24)
    plain = localizer_refined_masks(z_bar, images, labels, iterations=0)
    expected = torch.softmax(z_bar, 1)
    expected[:, 1:] *= labels[:, :, None, None]
    assert torch.allclose(plain, expected)
    refined = localizer_refined_masks(z_bar, images, labels, iterations=3, dilations=(1, 2))
    manual = pamr(denormalize_and_resize(images, (6, 6)), torch.softmax(z_bar, 1), 3, (1, 2))
    manual[:, 1:] *= labels[:, :, None, None]
    assert torch.allclose(refined, manual)
    assert torch.all(refined[:, 1:3] == 0) and torch.all(refined[0, 4] == 0)


def test_cam_pseudo_labels_rule():
    z_bar, labels, s_old = _inputs()
    q_hat, weight = cam_pseudo_labels(z_bar, labels, s_old)
    act = torch.relu(z_bar[:, 3:])
    cam = act / (act.amax(dim=(2, 3), keepdim=True) + 1e-5) * labels[:, 2:, None, None]
    assert torch.allclose(q_hat[:, 3:], cam)
    assert torch.all(q_hat[0, 4] == 0)
    assert q_hat[:, 3:].max() <= 1.0
    bkg = 1 - cam.amax(1)
    assert torch.allclose(q_hat[:, 0], torch.minimum(torch.sigmoid(s_old[:, 0]), bkg))
    assert torch.allclose(q_hat[:, 1:3], torch.sigmoid(s_old[:, 1:3]))
    assert torch.equal(weight, torch.ones(2))
