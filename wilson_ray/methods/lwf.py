"""LwF (as in MiB's tables): cross-entropy on the new step plus plain output distillation (method.md §3.10).

Training recipe (``mib.MIB_RECIPE``): MiB's published one — 30 epochs on VOC, one
learning rate for all parameter groups (``lr_head`` 1), lr 0.01 at step 0 and 0.001 after, poly 0.9, SGD Nesterov 0.9,
weight decay 1e-4, batch 24, crop 512 (MiB's README, fcdl94/MiB, which runs LwF with these flags; method.md §3.10).
WILSON's 40 epochs with head lr ×10 belong to WILSON only. COCO uses the same values: the WILSON paper ran these
baselines with MiB's code, whose COCO flags are not published.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray import losses
from wilson_ray.methods.base import Batch, Context, Method, cross_entropy_new_step
from wilson_ray.methods.mib import MIB_RECIPE
from wilson_ray.models.segmenter import ModelOutput


@dataclass
class LwFParams:
    kd_weight: float = 100.0  # loss_kd of MiB's LwF runs
    kd_temperature: float = 1.0  # 1 reproduces MiB (α_KD = 1)


class LwF(Method):
    name = "lwf"
    Params = LwFParams
    recipe = MIB_RECIPE

    def distillation(self, ctx: Context, batch: Batch, out: ModelOutput) -> dict:
        old = self.old_outputs(ctx, batch.images, upsample=True)
        return {"kd": self.p.kd_weight * losses.kd_loss(out.logits, old.logits, self.p.kd_temperature)}

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """CE + kd_weight · plain KD on the old channels, at image resolution."""
        out = ctx.net(batch.images, logits=True, upsample=True)
        return {"ce": cross_entropy_new_step(out.logits, batch.masks), **self.distillation(ctx, batch, out)}


METHODS = (LwF,)
