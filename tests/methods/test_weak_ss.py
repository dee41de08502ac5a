"""SS learner (baselines.md §5): the stochastic gate, GCI, the constant background logit, the loss terms and
their schedule, the background power and the optional CRF."""

from __future__ import annotations

import math

import pytest
import torch

from wilson_ray.config import ModelConfig
from wilson_ray.losses import ngwp_focal_scores
from wilson_ray.methods.base import Batch
from wilson_ray.weak import ss
from wilson_ray.weak.crf import crf_available

TINY = ModelConfig(backbone="small", output_stride=8, small_width=8, head_channels=16)


def test_stochastic_gate_at_test_time_is_the_fixed_mix():
    deep = torch.tensor([1.0, 2.0, -4.0])
    shallow = torch.tensor([3.0, 0.0, 1.0])
    out = ss.stochastic_gate(deep, shallow, 0.3, training=False)
    assert torch.allclose(out, torch.tensor([0.7 * 1 + 0.3 * 3, 0.7 * 2, 0.7 * -4 + 0.3 * 1]))


def test_stochastic_gate_at_training_picks_per_element_and_is_unbiased():
    torch.manual_seed(0)
    deep = torch.full((200_000,), 2.0)
    shallow = torch.full((200_000,), 5.0)
    out = ss.stochastic_gate(deep, shallow, 0.3, training=True)
    rescaled = (2.0 - 0.3 * 5.0) / 0.7
    is_deep = torch.isclose(out, torch.tensor(rescaled))
    assert (is_deep | (out == 5.0)).all()  # every element is one of the two
    assert is_deep.float().mean().item() == pytest.approx(0.7, abs=0.01)  # kept with probability 1 − ψ
    assert out.mean().item() == pytest.approx(2.0, abs=0.02)  # E = deep


def test_gci_modulates_shallow_features_by_deep_maxima():
    gci = ss.GlobalCueInjection(4).eval()
    shallow = torch.randn(2, 4, 5, 5)
    deep = torch.randn(2, 4, 3, 3)
    out = gci(shallow, deep)
    assert out.shape == (2, 4, 5, 5) and (out >= 0).all()
    # only the deep map's per-channel global maxima matter: moving its pixels around changes nothing ...
    assert torch.allclose(gci(shallow, deep.flip(-1).flip(-2)), out, atol=1e-6)
    # ... while other deep cues change the output
    assert not torch.allclose(gci(shallow, deep * 3.0), out, atol=1e-3)


def test_background_power_hand_values():
    probs = torch.tensor([[0.5, 0.9], [0.4, 0.05]]).view(2, 1, 2)
    out = ss.background_power(probs, 3.0)
    assert torch.allclose(out[0, 0], torch.tensor([0.125, 0.729]))
    assert torch.equal(out[1], probs[1])
    assert out.argmax(0).flatten().tolist() == [1, 0]  # 0.5 > 0.4 before, 0.125 < 0.4 after


def test_net_background_logit_is_constant_one_and_eval_is_deterministic():
    torch.manual_seed(0)
    learner = ss.SSLearner(ss.SSParams(), num_classes=3)
    net = learner.build_net(TINY).eval()
    x = torch.randn(1, 3, 48, 48)
    out = net(x)
    assert out.shape == (1, 4, 12, 12)  # stride 4 (the conv3 skip)
    assert torch.equal(out[:, 0], torch.ones_like(out[:, 0]))
    assert torch.equal(net(x), out)


def test_losses_schedule_and_values():
    torch.manual_seed(0)
    p = ss.SSParams(pretrain_epochs=2)
    learner = ss.SSLearner(p, num_classes=2)
    net = learner.build_net(TINY)
    batch = Batch(torch.randn(2, 3, 48, 48), torch.empty(0), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert set(learner.losses(net, batch, 1)) == {"cls"}  # before pretrain_epochs: classification only
    torch.manual_seed(1)
    terms = learner.losses(net, batch, 2)
    assert set(terms) == {"cls", "mask"} and all(torch.isfinite(v) for v in terms.values())
    # cls is the soft margin of nGWP + focal (the toolkit's WILSON function) with SS's p and λ
    net.eval()
    logits = net(batch.images)
    scores = ngwp_focal_scores(logits, 1.0, 3.0, 0.01)[:, 1:]
    y = batch.labels
    by_hand = -(y * torch.log(torch.sigmoid(scores)) + (1 - y) * torch.log(torch.sigmoid(-scores))).mean()
    assert learner.losses(net, batch, 0)["cls"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    sum(terms.values()).backward()
    assert net.decoder[-1].weight.grad.abs().sum() > 0


def test_mask_loss_weight_scales_the_pseudo_gt_term():
    torch.manual_seed(0)
    learner = ss.SSLearner(ss.SSParams(pretrain_epochs=0), num_classes=2)
    net = learner.build_net(TINY).eval()
    batch = Batch(torch.randn(2, 3, 48, 48), torch.empty(0), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    one = learner.losses(net, batch, 0)["mask"]
    learner.p.mask_loss_weight = 2.5
    assert learner.losses(net, batch, 0)["mask"].item() == pytest.approx(2.5 * one.item(), rel=1e-5)


def test_frozen_bn_follows_the_weights_unless_set():
    learner = ss.SSLearner(ss.SSParams(), 2)
    net = learner.build_net(TINY)
    assert not net.frozen_bn  # random init (no ImageNet weights): BN trains
    frozen = ss.SSLearner(ss.SSParams(frozen_bn=True), 2).build_net(TINY).train()
    bns = [m for m in frozen.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    assert frozen.decoder.training  # the head's BN still trains


def test_infer_mask_uses_only_labelled_classes():
    torch.manual_seed(0)
    learner = ss.SSLearner(ss.SSParams(scales=[1.0], flip=False), num_classes=3)
    net = learner.build_net(TINY).eval()
    mask = learner.infer_mask(net, torch.randn(1, 3, 40, 40), torch.tensor([0.0, 1.0, 0.0]), {})
    assert mask.shape == (40, 40) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0, 2}


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 (the 'wsss' extra) is not installed")
def test_infer_mask_with_crf_stays_in_labelled_classes():
    torch.manual_seed(0)
    learner = ss.SSLearner(ss.SSParams(scales=[1.0], flip=False, crf=True), num_classes=3)
    net = learner.build_net(TINY).eval()
    mask = learner.infer_mask(net, torch.randn(1, 3, 40, 40), torch.tensor([1.0, 0.0, 1.0]), {})
    assert mask.shape == (40, 40) and set(mask.unique().tolist()) <= {0, 1, 3}


def test_defaults_are_the_papers():
    p = ss.SSParams()
    assert (p.psi, p.focal_p, p.focal_lambda, p.pretrain_epochs, p.bg_power) == (0.3, 3.0, 0.01, 5, 3.0)
    assert p.pamr_dilations == [1, 2, 4, 8, 12, 24] and p.pamr_iterations == 10
    assert (p.cutoff_fg, p.cutoff_bg, p.cutoff_low) == (0.6, 0.7, 0.2)
    assert (p.epochs, p.batch_size, p.crop_size, p.lr, p.power, p.momentum) == (24, 16, 321, 1e-3, 0.0, 0.9)
    assert math.isclose(p.weight_decay, 5e-4) and p.crf is False
