"""Joint: the offline upper bound. Every class of the task in one fully-supervised step (method.md §3.1 loss)."""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray.methods.base import Batch, Context, Method


@dataclass
class JointParams:
    pass


class Joint(Method):
    name = "joint"
    Params = JointParams
    joint = True

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """Joint training is a single step 0 over the flattened task: the step-0 BCE."""
        return self.step0_losses(ctx, batch)
