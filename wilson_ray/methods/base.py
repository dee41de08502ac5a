"""The small interface every method implements: what to build at step t, the losses of one batch, the schedule.

A method never branches on task names: the protocol (``wilson_ray.protocol.Task``) tells it how many classes are
old and new. Step 0 is the same fully-supervised BCE step for every method (method.md §3.1), so every method of a
sweep shares one step-0 checkpoint; ``Method.losses`` is only called at steps >= 1.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray import losses
from wilson_ray.protocol import Task


@dataclass
class Batch:
    images: torch.Tensor  # [B,3,H,W] normalised
    masks: torch.Tensor  # [B,H,W] internal indices (training masks: 255 already mapped to 0)
    labels: torch.Tensor  # [B,C-1] visible image-level labels over internal foreground classes


class Trainable(nn.Module):
    """Everything that receives gradients at a step: the segmenter and, for weak methods, the localizer.

    One module so that DDP wraps (and synchronises) both; ``forward`` computes only what the flags ask for.
    """

    def __init__(self, model: nn.Module, localizer: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.localizer = localizer

    def forward(
        self, images: torch.Tensor, logits: bool = True, upsample: bool = False, localizer: bool = False
    ) -> dict[str, torch.Tensor]:
        model = self.model
        features = model.backbone(images)
        out = {"features": features}
        if logits:
            pre = model.head(features)
            s = torch.cat([cls(pre) for cls in model.classifiers], dim=1)
            if upsample:
                s = F.interpolate(s, size=images.shape[-2:], mode="bilinear", align_corners=False)
            out["logits"] = s
        if localizer:
            out["localizer"] = self.localizer(features)
        return out


@dataclass
class Context:
    """What a method's ``losses`` may use: the (possibly DDP-wrapped) trainable, its unwrapped module and the
    frozen old model (``None`` at step 0)."""

    net: nn.Module
    module: Trainable
    old_model: nn.Module | None


class Method(abc.ABC):
    """Base class. Subclasses set ``name``, ``Params`` (a dataclass with the paper's defaults) and ``losses``."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type]
    supervision: ClassVar[str] = "pixel"  # what steps >= 1 read: "pixel" masks or "image" labels
    uses_localizer: ClassVar[bool] = False
    joint: ClassVar[bool] = False  # trains every class of the task in one step (offline upper bound)

    def __init__(self, params: Any, task: Task, step: int, no_mask: bool = False):
        self.p = params
        self.no_mask = no_mask  # image labels of old classes visible too (paper Tab. 5)
        self.task = task
        self.step = step
        self.num_old = task.num_old(step)
        self.num_classes = task.num_classes(step)
        self.num_new = self.num_classes - self.num_old

    # --- what to build --------------------------------------------------------------------------------------
    def build_localizer(self, in_channels: int, norm: str) -> nn.Module | None:
        """The extra trainable module of this step (WILSON/CAM localizer), or None."""
        return None

    def on_model_ready(self, model: nn.Module) -> None:
        """Hook after the step-t model has loaded the step t-1 weights (e.g. MiB's balanced init)."""

    def warnings(self) -> list[str]:
        """Messages the engine prints once before training (e.g. a setting the method cannot handle well)."""
        return []

    # --- the schedule -----------------------------------------------------------------------------------------
    def constant_lr_epochs(self) -> int:
        """Epochs of constant LR before poly decay under the ``warmup`` policy (method.md §4)."""
        return 0

    # --- the losses -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch at step >= 1 (their sum is minimised); ``epoch`` is 0-based."""

    @staticmethod
    def step0_losses(ctx: Context, batch: Batch) -> dict[str, torch.Tensor]:
        """Step-0 (and joint) loss: multi-label BCE on upsampled logits (method.md §3.1)."""
        s = ctx.net(batch.images, logits=True, upsample=True)["logits"]
        return {"bce": losses.bce_step0_loss(s, batch.masks)}

    @staticmethod
    @torch.no_grad()
    def old_outputs(ctx: Context, images: torch.Tensor, upsample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen old model's (logits, body features), no gradient."""
        return ctx.old_model(images, upsample=upsample)


def cross_entropy_new_step(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Plain CE on a pixel-labelled step (old classes are background in the step's masks, method.md §1.1)."""
    return F.cross_entropy(logits, masks, ignore_index=255)
