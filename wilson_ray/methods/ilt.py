"""ILT: LwF's output distillation plus encoder feature distillation (method.md §3.10, loss_de = 100).

Training recipe (``mib.MIB_RECIPE``): MiB's published one — 30 epochs on VOC, one
learning rate for all parameter groups (``lr_head`` 1), lr 0.01 at step 0 and 0.001 after, poly 0.9, SGD Nesterov 0.9,
weight decay 1e-4, batch 24, crop 512 (MiB's README, fcdl94/MiB, which runs ILT with these flags; method.md §3.10).
WILSON's 40 epochs with head lr ×10 belong to WILSON only. COCO uses the same values: the WILSON paper ran these
baselines with MiB's code, whose COCO flags are not published.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray import losses
from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.lwf import LwF
from wilson_ray.models.segmenter import ModelOutput


@dataclass
class ILTParams(MemoryParams):
    kd_weight: float = 100.0
    kd_temperature: float = 1.0
    lambda_enc: float = 100.0  # loss_de of MiB's ILT runs


class ILT(LwF):
    name = "ilt"
    Params = ILTParams

    def distillation(self, out: ModelOutput, old: ModelOutput) -> dict:
        """LwF's KD + lambda_enc · encoder feature distillation (the new images' outputs)."""
        return {
            "kd": self.p.kd_weight * losses.kd_loss(out.logits, old.logits, self.p.kd_temperature),
            "enc": self.p.lambda_enc * losses.encoder_distillation_loss(out.features, old.features),
        }


METHODS = (ILT,)
