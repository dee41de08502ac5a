"""Fine-tuning: train on the new step's pixel labels with plain cross-entropy, nothing against forgetting.

Training recipe (``mib.MIB_RECIPE``): the fine-tuning (FT) rows the WILSON paper reports come from MiB's and
RECALL's tables, whose FT runs used MiB's code and flags (method.md §3.10, "MiB's optimiser settings"): 30 epochs on
VOC, one learning rate for all parameter groups, lr 0.001 at step t (0.01 at step 0), poly 0.9, SGD Nesterov 0.9,
weight decay 1e-4, batch 24. Not WILSON's step-t recipe (40 epochs, head lr ×10, warmup), which is WILSON's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.base import Batch, Context, MemoryMethod, cross_entropy_new_step, split_memory
from wilson_ray.methods.mib import MIB_RECIPE


@dataclass
class FinetuneParams(MemoryParams):
    pass


class Finetune(MemoryMethod):
    name = "finetune"
    Params = FinetuneParams
    recipe = MIB_RECIPE

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """CE over all C channels; old-class pixels are background in the step's masks. With a memory
        (docs/method.md §9): + memory_weight · ℓ_MEM on the memory images, against the old model's argmax."""
        images, n = self.with_memory(batch)
        s, s_mem = split_memory(ctx.net(images, logits=True, upsample=True).logits, n)
        terms = {"ce": cross_entropy_new_step(s, batch.masks)}
        if s_mem is not None:  # fine-tuning runs no old model otherwise: only the memory images need it
            terms.update(self.memory_terms(s_mem, self.old_outputs(ctx, images[n:], upsample=True).logits))
        return terms


METHODS = (Finetune,)
