"""Fine-tuning: train on the new step's pixel labels with plain cross-entropy, nothing against forgetting.

Training recipe (``mib.MIB_RECIPE``): the fine-tuning (FT) rows the WILSON paper reports come from MiB's and
RECALL's tables, whose FT runs used MiB's code and flags (method.md §3.10, "MiB's optimiser settings"): 30 epochs on
VOC, one learning rate for all parameter groups, lr 0.001 at step t (0.01 at step 0), poly 0.9, SGD Nesterov 0.9,
weight decay 1e-4, batch 24. Not WILSON's step-t recipe (40 epochs, head lr ×10, warmup), which is WILSON's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray.methods.base import Batch, Context, Method, cross_entropy_new_step
from wilson_ray.methods.mib import MIB_RECIPE


@dataclass
class FinetuneParams:
    pass


class Finetune(Method):
    name = "finetune"
    Params = FinetuneParams
    recipe = MIB_RECIPE

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """CE over all C channels; old-class pixels are background in the step's masks."""
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        return {"ce": cross_entropy_new_step(s, batch.masks)}


METHODS = (Finetune,)
