"""The softmax cross-entropy step 0 shared by PLOP and SDR (baselines.md §1, §2: both start from MiB's code, whose
step 0 is CE, not WILSON's BCE of method.md §3.1). Its checkpoint is cached apart from the BCE one (its name in
the cache key) and reused by both methods and every sweep trial of either.

It also accumulates SDR's prototype bank during training, as SDR's step-0 runs do (D ``train.py``: the PM weight
is set to 1 at step 0 only so that the accumulation runs); the bank rides in the checkpoint's method state. PLOP
ignores it. Background is accumulated at step 0 in both settings (the released code skips it in overlap, leaving
P_0 at zero, baselines.md §2 "Released-code defects").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from wilson_ray import prototypes
from wilson_ray.losses import IGNORE_INDEX
from wilson_ray.methods.base import Batch, Context, Method


@dataclass
class CEStepZeroParams:
    pass


class CEStepZero(Method):
    """Step 0 by softmax CE on upsampled logits (ignore 255) + SDR's prototype accumulation on body features."""

    name = "step0-ce"
    Params = CEStepZeroParams
    step0 = None  # a step-0 class trains its step itself

    def __init__(self, params: Any, task, step: int, no_mask: bool = False):
        super().__init__(params, task, step, no_mask)
        self.prototypes: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        out = ctx.net(batch.images, logits=True, upsample=False)
        s = F.interpolate(out.logits, size=batch.images.shape[-2:], mode="bilinear", align_corners=False)
        self.accumulate(out.features, batch.masks)
        return {"ce": F.cross_entropy(s.float(), batch.masks, ignore_index=IGNORE_INDEX)}

    def accumulate(self, f: torch.Tensor, masks: torch.Tensor) -> None:
        """Add this batch's per-class feature sums to the bank (labels nearest-downsampled to h×w)."""
        if self.prototypes is None:
            self.prototypes = torch.zeros(self.num_classes, f.shape[1], device=f.device)
            self.counts = torch.zeros(self.num_classes, device=f.device)
        labels = prototypes.downsample_labels(masks, f.shape[-2:])
        prototypes.update_prototypes(self.prototypes, self.counts, f, labels)

    def state_dict(self) -> dict[str, Any]:
        if self.prototypes is None:
            return {}
        return {"prototypes": self.prototypes, "counts": self.counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "prototypes" in state:
            self.prototypes, self.counts = state["prototypes"], state["counts"]
