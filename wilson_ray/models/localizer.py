"""The WILSON localizer ("pseudolabeler" in the official code), method.md §2.3."""

from __future__ import annotations

import torch
from torch import nn

from wilson_ray.models.norm import norm_act


class Localizer(nn.Module):
    """Body features [B, in, h, w] -> localizer logits z [B, num_classes, h, w] (method.md §2.3).

    3x3 conv (no bias) -> BN+act -> 3x3 conv (no bias) -> BN+act -> 1x1 conv with bias, PyTorch default init
    (§2.5). It scores every seen class, background and old classes included.
    """

    def __init__(self, in_channels: int, num_classes: int, norm: str = "bn_leaky", hidden: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            norm_act(hidden, norm),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            norm_act(hidden, norm),
            nn.Conv2d(hidden, num_classes, 1, bias=True),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
