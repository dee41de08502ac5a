"""Online CAM (``cam_online``; not the paper's CAM row, which is ``cam``: offline masks, baselines.md §0, §6):
WILSON's localizer trained with plain global-average-pooling image classification, no ℓ_LOC prior, and its class
activation maps become the pseudo-labels of ℓ_SEG during the step.

Everything else (schedule, encoder distillation, old-model targets on old classes) is WILSON's, so the rows
differ only in how the new classes are localised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wilson_ray import losses, pseudo_labels
from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.base import Batch
from wilson_ray.methods.wilson import Wilson


@dataclass
class CamOnlineParams(MemoryParams):
    bkg_beta: float | None = None
    pseudo_epochs: int = 5
    lambda_cls: float = 1.0
    lambda_enc: float = 1.0
    lambda_seg: float = 1.0


class CamOnline(Wilson):
    name = "cam_online"
    Params = CamOnlineParams

    def localizer_losses(self, z: torch.Tensor, s_old: torch.Tensor, labels: torch.Tensor) -> dict:
        """GAP multi-label classification on the new classes only; no prior."""
        return {"cls": self.p.lambda_cls * losses.gap_classification_loss(z, labels, self.num_new, self.no_mask)}

    def targets(self, z_bar: torch.Tensor, labels: torch.Tensor, s_old: torch.Tensor):
        return pseudo_labels.cam_pseudo_labels(z_bar, labels, s_old, bkg_beta=self.p.bkg_beta)

    def self_supervision(self, z, z_bar, batch: Batch) -> dict:
        return {}


METHODS = (CamOnline,)
