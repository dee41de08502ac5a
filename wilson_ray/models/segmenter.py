"""Incremental segmenter: encoder + DeepLab-V3 head + one classifier per step (method.md §2.1, §2.2, §2.6)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.errors import UserError
from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.head import DeepLabV3Head


class ModelOutput(NamedTuple):
    """What every model of the toolkit returns (segmenter, trainable, frozen old model): ``logits`` [B,C,h,w]
    (None when not asked for), body ``features`` and, for methods with a localizer, its train-mode logits z
    (``localizer``) and its eval-mode logits z̄ on the detached features (``localizer_eval``, no gradient). A
    NamedTuple so that DDP, torch.compile and autograd see through it."""

    logits: torch.Tensor | None
    features: torch.Tensor
    localizer: torch.Tensor | None = None
    localizer_eval: torch.Tensor | None = None
    # PLOP's distilled intermediate maps when asked for (``maps=True``): the pre-activation residual sum of each
    # encoder stage's last block, then the head output (baselines.md §1).
    maps: tuple[torch.Tensor, ...] | None = None


class Segmenter(nn.Module):
    """Body -> head -> per-step 1x1 classifiers whose logits are concatenated in step order (§2.2).

    ``classes_per_step[0]`` counts background plus the step-0 classes. A step-t model loads a step t-1
    state dict with ``strict=False``: every previous classifier is restored and ``classifiers[t]`` keeps its
    random init (§2.5).
    """

    def __init__(self, backbone: nn.Module, head: DeepLabV3Head, classes_per_step: list[int]):
        super().__init__()
        counts = [int(n) for n in classes_per_step]
        if not counts or any(n < 1 for n in counts):
            raise UserError(
                f"classes_per_step: found {list(classes_per_step)!r}, expected a non-empty list of positive counts"
            )
        self.backbone = backbone
        self.head = head
        self.classes_per_step = counts
        self.classifiers = nn.ModuleList([nn.Conv2d(head.out_channels, n, 1, bias=True) for n in counts])

    @property
    def num_classes(self) -> int:
        """Total number of output channels (background + all classes seen so far)."""
        return sum(self.classes_per_step)

    def forward(self, x: torch.Tensor, upsample: bool = True, maps: bool = False) -> ModelOutput:
        """Return ``ModelOutput(logits, features)``. Logits are bilinearly upsampled (align_corners=False) to the input
        size when ``upsample``, else left at feature resolution as every step ≥ 1 loss needs (§2.6). ``maps`` adds
        the per-stage residual sums and the head output (``ModelOutput.maps``)."""
        body, sums = self.backbone(x, stages=True) if maps else (self.backbone(x), ())
        pre_logits = self.head(body)
        logits = torch.cat([cls(pre_logits) for cls in self.classifiers], dim=1)
        if upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits, body, maps=(*sums, pre_logits) if maps else None)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters (their own learning rate, §4)."""
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Head plus every classifier's parameters (learning rate × lr_head, §4)."""
        return list(self.head.parameters()) + list(self.classifiers.parameters())

    @torch.no_grad()
    def init_balanced_(self) -> None:
        """MiB init_balanced (method.md §3.10) of the newest classifier.

        Each new class gets a copy of the background weight row of classifier 0 and bias
        b_bkg − log(C_new + 1); the background bias is set to that value too, so background and the new
        classes split the old background probability evenly at the start of the step.
        """
        if len(self.classifiers) < 2:
            raise UserError("init_balanced: found a step-0 model (one classifier), expected a step ≥ 1 model")
        old, new = self.classifiers[0], self.classifiers[-1]
        n_new = new.out_channels
        bias = old.bias[0] - math.log(n_new + 1)
        new.weight.copy_(old.weight[0:1].expand_as(new.weight))
        new.bias.fill_(bias.item())
        old.bias[0] = bias


def build_segmenter(
    backbone: str,
    classes_per_step: list[int],
    output_stride: int = 16,
    norm: str = "bn_leaky",
    small_width: int = 16,
    pooling_size: int | None = None,
    head_channels: int = 256,
) -> Segmenter:
    """Build the full segmenter of method.md §2 (random init; load weights with ``load_backbone_weights``)."""
    body = build_backbone(backbone, output_stride=output_stride, norm=norm, small_width=small_width)
    head = DeepLabV3Head(
        body.out_channels, head_channels, output_stride=output_stride, norm=norm, pooling_size=pooling_size
    )
    return Segmenter(body, head, classes_per_step)
