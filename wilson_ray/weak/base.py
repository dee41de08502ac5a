"""The weak-learner contract (baselines.md §0 steps 1-2): a WSSS method's own classification net, its training
losses and its pseudo-mask inference, driven by the shared adapter ``wilson_ray.weak.pipeline``.

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from wilson_ray.config import ModelConfig
    from wilson_ray.methods.base import Batch

BIAS_LR_MULT = 2.0  # SEAM/EPS/PSA recipe: biases learn twice as fast as weights, without weight decay
NEW_LR_MULT = 10.0  # layers that are not ImageNet-initialised learn ×10 (their biases ×20)


@dataclass
class LearnerSchedule:
    """The learner's own training schedule (step 1 of baselines.md §0). Every learner's ``Params`` subclasses it,
    so these knobs sit beside the method's loss knobs in config and in sweeps.

    The published recipes (SEAM/EPS: batch 8, crop 448, lr 0.01 poly, wd 5e-4) are the defaults; presets shrink
    epochs and crop for CPU demos."""

    epochs: int = 8  # passes over the step's training images (the papers count 8 epochs / ~20k iterations)
    lr: float = 0.01
    batch_size: int = 8
    crop_size: int = 448
    weight_decay: float = 5e-4
    momentum: float = 0.9
    power: float = 0.9  # poly decay of the learning rate
    max_iters_per_epoch: int | None = None  # cap for short runs; None = full epochs
    backbone: str | None = None  # None: the run's model.backbone; e.g. wideresnet38 (the WSSS repos' ResNet-38)
    pretrained: str | None = None  # the learner's ImageNet init when it has its own backbone (model.pretrained format)


class WeakLearner(abc.ABC):
    """One WSSS method: its own classification net, its training losses, and its pseudo-mask inference
    (baselines.md §0 steps 1-2). The shared adapter (wilson_ray/weak/pipeline.py) drives it."""

    name: ClassVar[str]  # "cam" | "seam" | "ss" | "eps"
    Params: ClassVar[type]  # dataclass of its knobs with the published defaults (subclass of LearnerSchedule)
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # per-sample inputs it needs, e.g. ("saliency",) for EPS

    def __init__(self, params: Any, num_classes: int):
        self.p = params
        self.num_classes = num_classes  # K = the step's new classes (dimension of the labels)

    @abc.abstractmethod
    def build_net(self, model_cfg: ModelConfig) -> nn.Module:
        """The classification net; its backbone from wilson_ray.models (cfg.model.backbone: 'small' for the demo,
        'resnet101', or 'wideresnet38'), ImageNet init per cfg.model weights. The net exposes
        ``backbone_parameters()`` and ``new_parameters()``."""

    def param_groups(self, net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """Default (SEAM/EPS/CAM/SS recipe): backbone weights ×1, backbone biases ×2, new layers' weights ×10,
        new layers' biases ×20; no weight decay on biases (1-d parameters: biases and norm scales)."""
        groups = []
        for part, mult in (("backbone", 1.0), ("new", NEW_LR_MULT)):
            params = [p for p in getattr(net, f"{part}_parameters")() if p.requires_grad]
            weights = [p for p in params if p.ndim > 1]
            biases = [p for p in params if p.ndim <= 1]
            if weights:
                groups.append({"params": weights, "lr": lr * mult, "weight_decay": weight_decay, "name": f"{part}_w"})
            if biases:
                groups.append(
                    {"params": biases, "lr": lr * mult * BIAS_LR_MULT, "weight_decay": 0.0, "name": f"{part}_b"}
                )
        return groups

    @abc.abstractmethod
    def losses(self, net: nn.Module, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (summed and minimised). batch: wilson_ray.methods.base.Batch with
        images [B,3,H,W], labels [B,K] float new-class image labels, extras[name] for each extra_inputs
        (saliency: [B,1,H,W] float in [0,1], same crop/flip as the image). batch.masks is NOT to be used."""

    def after_training(self, net: nn.Module, dataset: Any, device: torch.device) -> None:
        """Optional phase between training the net and inferring masks (SEAM: CRF seeds + AffinityNet).
        dataset yields (image [3,H,W] normalised, labels [K], extras dict, image_id) without augmentation."""

    @abc.abstractmethod
    @torch.no_grad()
    def infer_mask(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        """The method's own hard pseudo-mask of one training image [1,3,H,W] given its labels [K]: LongTensor
        [H,W] with 0 = background, 1..K = the step's new classes in order, 255 = ignore."""


def multiscale_flip(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    flip: bool = True,
) -> list[torch.Tensor]:
    """fn(image at each scale, and its horizontal flip) -> [1,C,h,w] maps, each resized back to image size
    (bilinear) and un-flipped; returned as a list so each method aggregates its own way (sum/mean/softmax)."""
    size = image.shape[-2:]
    maps = []
    for scale in scales:
        h, w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        scaled = image if (h, w) == tuple(size) else F.interpolate(image, (h, w), mode="bilinear", align_corners=False)
        views = [(scaled, False)] + ([(scaled.flip(-1), True)] if flip else [])
        for view, flipped in views:
            out = fn(view)
            if flipped:
                out = out.flip(-1)
            maps.append(F.interpolate(out, size, mode="bilinear", align_corners=False))
    return maps


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Normalised image [1,3,H,W] -> uint8-range float RGB [1,3,H,W] (for CRF / PAMR / SEAM's PCM input)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return ((image * std + mean) * 255.0).clamp(0, 255)


__all__ = ["LearnerSchedule", "WeakLearner", "denormalize", "multiscale_flip"]
