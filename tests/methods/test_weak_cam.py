"""The paper's CAM row learner (baselines.md §6): soft margin, CAM = ReLU(fc as 1x1 conv), EPS's mask rule,
and the multi-scale + flip helper of the weak-learner contract."""

import math

import pytest
import torch

from wilson_ray.config import ModelConfig
from wilson_ray.methods.base import Batch
from wilson_ray.weak import LEARNERS
from wilson_ray.weak.base import denormalize, multiscale_flip
from wilson_ray.weak.cam import CamLearner, CamParams, maps_to_mask, soft_margin_loss


def test_soft_margin_against_hand_computed_values():
    logits = torch.tensor([[0.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0]])
    # mean over classes of -log σ(0) and -log(1 - σ(2)) = log 2 and log(1 + e²)
    expected = (math.log(2.0) + math.log(1.0 + math.e**2)) / 2
    assert soft_margin_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_maps_to_mask_normalises_per_class_and_uses_the_constant_background():
    score = torch.zeros(3, 1, 4)
    score[0, 0] = torch.tensor([10.0, 5.0, 1.0, 0.0])  # class 1: normalised 1, .5, .1, 0
    score[1, 0] = torch.tensor([0.0, 0.0, 0.3, 0.1])  # class 2: 0, 0, 1, .33
    score[2, 0] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # class 3 is not in the image's labels
    mask = maps_to_mask(score, torch.tensor([1.0, 1.0, 0.0]), bg_threshold=0.2)
    assert mask[0].tolist() == [1, 1, 2, 2]
    mask = maps_to_mask(score, torch.tensor([1.0, 0.0, 0.0]), bg_threshold=0.2)
    assert mask[0].tolist() == [1, 1, 0, 0]  # 0.1 < 0.2 -> background


def test_multiscale_flip_resizes_back_and_unflips():
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    maps = multiscale_flip(lambda x: x, image, scales=(1.0,), flip=True)
    assert len(maps) == 2 and all(torch.equal(m, image) for m in maps)  # the flipped view comes back unflipped
    sizes = []
    multiscale_flip(lambda x: sizes.append(tuple(x.shape[-2:])) or x, image, scales=(0.5, 2.0), flip=True)
    assert sizes == [(2, 3), (2, 3), (8, 12), (8, 12)]
    assert denormalize(torch.zeros(1, 3, 1, 1)).flatten().tolist() == pytest.approx(
        [0.485 * 255, 0.456 * 255, 0.406 * 255]
    )


def test_cam_learner_net_and_losses():
    assert LEARNERS["cam"] is CamLearner
    torch.manual_seed(0)
    learner = CamLearner(CamParams(scales=[1.0], flip=False), num_classes=3)
    net = learner.build_net(ModelConfig(backbone="small", small_width=8, output_stride=8))
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    terms = learner.losses(net, Batch(images, torch.empty(0), labels), epoch=0)
    assert set(terms) == {"cls"} and terms["cls"].item() > 0
    terms["cls"].backward()
    assert net.classifier.weight.grad is not None and net.classifier.bias is None  # bias-free fc
    # GAP of the CAM logits equals the fc of the pooled features (the GAP classifier of resnet38_cls)
    net.eval()
    feats = net.backbone(images)
    pooled = net.classifier(feats.mean(dim=(2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(net(images).mean(dim=(2, 3)), pooled, atol=1e-5)
    mask = learner.infer_mask(net, images[:1], labels[0], {})
    assert mask.shape == (32, 32) and set(mask.unique().tolist()) <= {0, 1}  # only labelled classes
    groups = {g["name"]: g for g in learner.param_groups(net, 0.01, 5e-4)}
    assert groups["new_w"]["lr"] == pytest.approx(0.1) and groups["backbone_b"]["lr"] == pytest.approx(0.02)
    assert groups["backbone_b"]["weight_decay"] == 0.0 and groups["backbone_w"]["weight_decay"] == 5e-4
