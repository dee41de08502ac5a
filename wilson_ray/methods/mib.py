"""MiB: unbiased cross-entropy + unbiased knowledge distillation + balanced classifier init (method.md §3.10).

Training recipe (``MIB_RECIPE``, declared here for every method run with MiB's code): MiB's published one — 30
epochs on VOC, one learning rate for all parameter groups (``lr_head`` 1), lr 0.01 at step 0 and 0.001 after, poly
0.9, SGD Nesterov 0.9, weight decay 1e-4, batch 24, crop 512 (MiB's README, fcdl94/MiB, which runs MiB with these
flags; method.md §3.10).
WILSON's 40 epochs with head lr ×10 belong to WILSON only. COCO uses the same values: the WILSON paper ran these
baselines with MiB's code, whose COCO flags are not published.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray import losses
from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.base import Batch, Context, MemoryMethod, split_memory

# MiB's step-t recipe where it differs from the defaults (WILSON's: 40 epochs, head lr x10, warmup): 30 epochs,
# lr 0.001, one learning rate for all parameter groups, poly 0.9. Its step 0 is the defaults' (lr 0.01, one LR,
# 30 epochs, poly), shared with WILSON's.
MIB_RECIPE = {"incremental": {"epochs": 30, "lr": 0.001, "lr_head": 1.0, "policy": "poly"}}


@dataclass
class MiBParams(MemoryParams):
    kd_weight: float = 10.0  # loss_kd (MiB; 100 for 15-1, MiB issue #22)
    # MiB's α of the unbiased KD (`--alpha`, UnbiasedKnowledgeDistillationLoss): the old model's logits are
    # multiplied by α before their softmax; the student is not scaled. 1 reproduces MiB's published runs.
    kd_alpha: float = 1.0
    init_balanced: bool = True


class MiB(MemoryMethod):
    name = "mib"
    Params = MiBParams
    recipe = MIB_RECIPE

    def on_model_ready(self, model) -> None:
        if self.p.init_balanced:
            model.init_balanced_()

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """Unbiased CE on the new step's masks + kd_weight · unbiased KD against the old model; with a memory
        (docs/method.md §9), + memory_weight · ℓ_MEM on the memory images."""
        images, n = self.with_memory(batch)
        s, s_mem = split_memory(ctx.net(images, logits=True, upsample=True).logits, n)
        s_old, s_old_mem = split_memory(self.old_outputs(ctx, images, upsample=True).logits, n)
        # The unbiased KD stays on the new images: its kd_weight is calibrated for them, and on the memory images
        # ℓ_MEM already pulls the new model to the old one (its argmax), so KD there would count them twice and
        # memory_weight would no longer be the one knob of the memory's strength.
        terms = {
            "unce": losses.unbiased_ce_loss(s, batch.masks, self.num_old),
            "unkd": self.p.kd_weight * losses.unbiased_kd_loss(s, s_old, alpha=self.p.kd_alpha),
        }
        if s_mem is not None:
            terms.update(self.memory_terms(s_mem, s_old_mem))
        return terms


METHODS = (MiB,)
