"""Joint: the offline upper bound. Every class of the task in one fully-supervised step (method.md §3.1 loss)."""

from __future__ import annotations

from dataclasses import dataclass

from wilson_ray.methods.base import Batch, Context, Method, TaskView
from wilson_ray.protocol import Task


@dataclass
class JointParams:
    pass


class Joint(Method):
    name = "joint"
    Params = JointParams
    step0 = None  # its one step trains every class: not the shared step-0 checkpoint

    @classmethod
    def task_view(cls, task: Task) -> TaskView:
        """Trains the flattened task (one step, all classes) and reports in the source task's old/new columns."""
        return TaskView(task.flattened(), task)

    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """Joint training is a single step 0 over the flattened task: the step-0 BCE."""
        return self.step0_losses(ctx, batch)


METHODS = (Joint,)
