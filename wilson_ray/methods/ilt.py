"""ILT: LwF's output distillation plus encoder feature distillation (method.md §3.10, loss_de = 100)."""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray import losses
from wilson_ray.methods.base import Batch, Context
from wilson_ray.methods.lwf import LwF
from wilson_ray.models.segmenter import ModelOutput


@dataclass
class ILTParams:
    kd_weight: float = 100.0
    kd_temperature: float = 1.0
    lambda_enc: float = 100.0  # loss_de of MiB's ILT runs


class ILT(LwF):
    name = "ilt"
    Params = ILTParams

    def distillation(self, ctx: Context, batch: Batch, out: ModelOutput) -> dict:
        old = self.old_outputs(ctx, batch.images, upsample=True)
        return {
            "kd": self.p.kd_weight * losses.kd_loss(out.logits, old.logits, self.p.kd_temperature),
            "enc": self.p.lambda_enc * losses.encoder_distillation_loss(out.features, old.features),
        }
