"""Paired image/mask transforms (torchvision.transforms.v2) for training and evaluation (method.md §4, §5).

Inputs are ``tv_tensors.Image`` (uint8 [3, H, W]) and ``tv_tensors.Mask`` (uint8 [H, W]); v2 resizes images
bilinearly and masks with nearest neighbour, and ``Normalize`` / ``ToDtype`` leave masks untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from wilson_ray.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_MODES = ("crop", "full")


def to_float_normalised() -> list:
    """The last two transforms of every pipeline: uint8 image -> float in [0, 1], then ImageNet mean/std."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(crop_size: int) -> v2.Compose:
    """Training augmentation (method.md §4): random resized crop (area 0.5-2.0, ratio 3/4-4/3), h-flip, normalise.

    torchvision's RandomResizedCrop makes 10 attempts, then falls back to a central crop, as the reference does;
    no colour jitter.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            *to_float_normalised(),
        ]
    )


def eval_transform(crop_size: int, mode: str = "crop") -> v2.Compose:
    """Evaluation pre-processing (method.md §5).

    ``crop``: resize the shorter side to ``crop_size``, then center-crop ``crop_size`` x ``crop_size`` (the paper's
    protocol). ``full``: the full image, only normalised.
    """
    if mode == "crop":
        geometry = [v2.Resize(crop_size, antialias=True), v2.CenterCrop(crop_size)]
    elif mode == "full":
        geometry = []
    else:
        raise UserError(f"eval_mode: got {mode!r}, expected one of {', '.join(EVAL_MODES)}")
    return v2.Compose([*geometry, *to_float_normalised()])


def to_tv_tensors(image: Image.Image, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Wrap an RGB PIL image and a uint8 [H, W] mask as tv_tensors (no copy of the mask)."""
    img = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return tv_tensors.Image(img), tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of a [..., 3, H, W] float tensor (for visualisation), values in 0..1."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
