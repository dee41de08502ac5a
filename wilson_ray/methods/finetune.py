"""Fine-tuning: train on the new step's pixel labels with plain cross-entropy, nothing against forgetting."""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray.methods.base import Batch, Context, Method, cross_entropy_new_step


@dataclass
class FinetuneParams:
    pass


class Finetune(Method):
    name = "finetune"
    Params = FinetuneParams

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """CE over all C channels; old-class pixels are background in the step's masks."""
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        return {"ce": cross_entropy_new_step(s, batch.masks)}
