"""EPS (baselines.md §6): the saliency loss (valid-class rule, fg/bg maps, MSE) on hand-computed tensors."""

import math

import pytest
import torch

from wilson_ray.config import ModelConfig
from wilson_ray.methods.base import Batch
from wilson_ray.weak import LEARNERS
from wilson_ray.weak.eps import EpsLearner, EpsParams, saliency_loss

LN3 = math.log(3.0)
# One class + background on two pixels: p = (0.75, 0.25) at pixel a, (0.25, 0.75) at pixel b.
CAM = torch.tensor([[[[LN3, 0.0]], [[0.0, LN3]]]])


def test_valid_class_counts_as_foreground():
    # round(p_1) = [1, 0] overlaps the salient pixel a fully: valid. fg = p_1, bg = 1 - p_bg = p_1.
    loss = saliency_loss(CAM, torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[1.0]]), tau=0.4, lam=0.5)
    assert loss.item() == pytest.approx((0.25**2 + 0.25**2) / 2, abs=1e-4)


def test_invalid_labelled_class_counts_as_background():
    # Saliency on pixel b only: overlap 0 < τ, so class 1 is invalid: fg = 0, bg = 1 - (p_bg + p_1) = 0.
    loss = saliency_loss(CAM, torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[1.0]]), tau=0.4, lam=0.5)
    assert loss.item() == pytest.approx((0.0 + 1.0) / 2, abs=1e-4)


def test_unlabelled_class_is_neither_and_lambda_weighs_fg():
    # Not labelled: fg = 0, bg = 1 - p_bg = (0.75, 0.25); estimate 0.5·bg = (0.375, 0.125) vs S = (1, 0).
    loss = saliency_loss(CAM, torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[0.0]]), tau=0.4, lam=0.5)
    assert loss.item() == pytest.approx((0.625**2 + 0.125**2) / 2, abs=1e-4)
    # λ = 1: only the valid foreground map: (0.75, 0.25) vs (1, 0)
    loss = saliency_loss(CAM, torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[1.0]]), tau=0.4, lam=1.0)
    assert loss.item() == pytest.approx(0.0625, abs=1e-4)


def test_tau_threshold_and_resize():
    # overlap 1/2 (two predicted pixels, one salient): valid under τ = 0.4, invalid under τ = 0.6
    cam = torch.tensor([[[[5.0, 5.0]], [[0.0, 0.0]]]])
    sal = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])  # 1x4 -> nearest 1x2 = (1, 0)
    low = saliency_loss(cam, sal, torch.tensor([[1.0]]), tau=0.4, lam=0.5)
    high = saliency_loss(cam, sal, torch.tensor([[1.0]]), tau=0.6, lam=0.5)
    p = torch.sigmoid(torch.tensor(5.0)).item()
    assert low.item() == pytest.approx(((p - 1) ** 2 + p**2) / 2, abs=1e-5)  # fg = bg = p_1
    assert high.item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-5)  # fg = 0 and bg = 1 - 1 = 0


def test_eps_learner_losses_and_mask():
    assert LEARNERS["eps"] is EpsLearner and EpsLearner.extra_inputs == ("saliency",)
    assert (EpsParams().tau, EpsParams().lam, EpsParams().bg_threshold) == (0.4, 0.5, 0.2)
    torch.manual_seed(0)
    learner = EpsLearner(EpsParams(scales=[1.0, 0.5], flip=True), num_classes=2)
    net = learner.build_net(ModelConfig(backbone="small", small_width=8, output_stride=8))
    assert net.classifier.out_channels == 3  # K + 1, the last one background
    batch = Batch(
        torch.randn(2, 3, 32, 32),
        torch.empty(0),
        torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        {"saliency": torch.rand(2, 1, 32, 32)},
    )
    terms = learner.losses(net, batch, epoch=0)
    assert set(terms) == {"cls", "sal"} and all(torch.isfinite(v) for v in terms.values())
    net.eval()
    mask = learner.infer_mask(net, batch.images[:1], batch.labels[0], {})
    assert mask.shape == (32, 32) and set(mask.unique().tolist()) <= {0, 1}
