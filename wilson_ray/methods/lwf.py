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
from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.base import Batch, Context, MemoryMethod, cross_entropy_new_step, split_memory
from wilson_ray.methods.mib import MIB_RECIPE
from wilson_ray.models.segmenter import ModelOutput


@dataclass
class LwFParams(MemoryParams):
    kd_weight: float = 100.0  # loss_kd of MiB's LwF runs
    kd_temperature: float = 1.0  # 1 reproduces MiB (α_KD = 1)


class LwF(MemoryMethod):
    name = "lwf"
    Params = LwFParams
    recipe = MIB_RECIPE

    def distillation(self, out: ModelOutput, old: ModelOutput) -> dict:
        """kd_weight · plain KD of the new logits against the old ones (the new images' outputs)."""
        return {"kd": self.p.kd_weight * losses.kd_loss(out.logits, old.logits, self.p.kd_temperature)}

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """CE + kd_weight · plain KD on the old channels, at image resolution; with a memory (docs/method.md §9),
        + memory_weight · ℓ_MEM on the memory images."""
        images, n = self.with_memory(batch)
        out = ctx.net(images, logits=True, upsample=True)
        old = self.old_outputs(ctx, images, upsample=True)
        # The distillation stays on the new images: its weights (kd 100, ILT's loss_de 100) are calibrated for
        # them, and on the memory images ℓ_MEM already pulls the new model to the old one, so distilling there too
        # would count them twice and memory_weight would no longer be the one knob of the memory's strength.
        new, old_new = new_part(out, n), new_part(old, n)
        terms = {"ce": cross_entropy_new_step(new.logits, batch.masks), **self.distillation(new, old_new)}
        if images.shape[0] > n:
            terms.update(self.memory_terms(out.logits[n:], old.logits[n:]))
        return terms


def new_part(out: ModelOutput, n: int) -> ModelOutput:
    """The logits and features of a joined batch's first ``n`` images (its new ones); ``out`` itself without a
    memory (``split_memory``: the memory-off graph stays the one before the memory)."""
    if out.logits.shape[0] == n:
        return out
    return ModelOutput(split_memory(out.logits, n)[0], split_memory(out.features, n)[0])


METHODS = (LwF,)
