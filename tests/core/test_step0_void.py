"""Step-0 BCE and void (method.md §3.1): wilson-ray skips 255 pixels, the official code maps 255 to background and
averages over all pixels; the two agree on every training batch because training masks hold no 255."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wilson_ray import losses, protocol
from wilson_ray.data.dataset import build_dataset


def official_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official rule: 255 -> background in the one-hot target, then the mean over all B·H·W pixels."""
    onehot = F.one_hot(torch.where(target == 255, 0, target).long(), logits.shape[1]).permute(0, 3, 1, 2)
    return F.binary_cross_entropy_with_logits(logits, onehot.float(), reduction="none").sum(1).mean()


def test_the_two_rules_agree_without_void_and_differ_with_it():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    assert torch.allclose(losses.bce_step0_loss(logits, target), official_bce(logits, target), rtol=1e-6)
    target[0, :2] = 255  # 14 of 84 pixels void
    ours, official = losses.bce_step0_loss(logits, target), official_bce(logits, target)
    valid = target != 255
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, F.one_hot(torch.where(valid, target, 0), 5).permute(0, 3, 1, 2).float(), reduction="none"
    ).sum(1)
    assert torch.allclose(ours, per_pixel[valid].mean(), rtol=1e-6)  # ours: void dropped
    assert torch.allclose(official, per_pixel.mean(), rtol=1e-6)  # official: void trained as background
    assert abs(float(ours - official)) > 1e-3


def test_training_masks_hold_no_void_after_augmentation_so_step0_training_is_identical(synth_root):
    task = protocol.get_task("15-5")
    ds = build_dataset(synth_root, task, 0, "train", crop_size=48)
    raw_void = sum(int((np.asarray(ds.load(i)[1]) == 255).sum()) for i in range(len(ds)))
    val = build_dataset(synth_root, task, 0, "val", crop_size=48)
    assert any((val[i][1] == 255).any() for i in range(len(val))), "the synthetic masks have void borders"
    assert raw_void == 0
    torch.manual_seed(0)
    masks = torch.stack([ds[i % len(ds)][1] for i in range(3 * len(ds))])  # random resized crops (scale up to 2)
    assert not (masks == 255).any()
    logits = torch.randn(masks.shape[0], task.num_classes(0), *masks.shape[-2:])
    assert torch.allclose(losses.bce_step0_loss(logits, masks), official_bce(logits, masks), rtol=1e-6)
