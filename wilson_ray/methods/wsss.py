"""The image-label rows of the paper's table (CAM, SEAM, SS, EPS; baselines.md §0 step 3): DeepLab-V3 from step
t−1 trained on a WSSS learner's offline hard pseudo-masks m with the old model's sigmoid targets (Eq. 7/8, α = 1):

    q_b = min(σ(s_old,b), 1[m = b]),   q_c = 1[m = c] for the new classes,   q_c = σ(s_old,c) for old foreground,

BCE summed over classes, mean over pixels, at full crop resolution; 255 counts as 0 in every 1[m = ·]. No
localizer, no feature distillation: the sigmoid targets are the only memory of the old classes.

The masks come from ``wilson_ray.weak.pipeline`` (trained once per step and cached) through the ``pseudo_mask``
extra input, so they get the image's crop and flip. One ``Method`` subclass per learner (``wsss_method``); its
``Params`` are the learner's (schedule + loss + inference knobs), all sweepable as ``method.<knob>``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from wilson_ray.methods.base import Batch, Context, Method
from wilson_ray.protocol import get_task
from wilson_ray.weak import LEARNERS
from wilson_ray.weak.base import WeakLearner

PSEUDO_MASK = "pseudo_mask"


def offline_mask_targets(mask: torch.Tensor, s_old: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Target q [B,C,H,W] of the α = 1 form (baselines.md §0 step 3) from hard masks [B,H,W] (internal indices,
    255 = ignore) and the old logits [B,C_old,H,W]."""
    c_old = s_old.shape[1]
    onehot = F.one_hot(torch.where(mask == 255, num_classes, mask).long(), num_classes + 1)[..., :num_classes]
    onehot = onehot.permute(0, 3, 1, 2).float()
    p_old = torch.sigmoid(s_old.float())
    return torch.cat([torch.minimum(p_old[:, :1], onehot[:, :1]), p_old[:, 1:c_old], onehot[:, c_old:]], dim=1)


def offline_mask_loss(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_c BCEWithLogits(s_c, q_c), mean over pixels and images (WILSON's ``IcarlLoss`` with ``icarl_bkg=-1``)."""
    return F.binary_cross_entropy_with_logits(s.float(), q, reduction="none").sum(1).mean()


class WsssRow(Method):
    """Step t ≥ 1 of an image-label row: the segmenter learns from its learner's cached pseudo-masks."""

    learner: ClassVar[type[WeakLearner]]
    extra_inputs = (PSEUDO_MASK,)

    def prepare_inputs(self, cfg, check_only: bool = False) -> dict:
        """Make (or read) the learner's pseudo-masks of this step before the datasets exist."""
        from wilson_ray.data.extras import mask_input
        from wilson_ray.weak import pipeline

        if check_only:
            pipeline.check_learner_inputs(cfg, self.task, self.step, self.learner, self.p)
            return {PSEUDO_MASK: None}
        folder = pipeline.ensure_pseudo_masks(cfg, self.task, self.step, self.learner, self.p)
        return {PSEUDO_MASK: mask_input(PSEUDO_MASK, folder)}

    @classmethod
    def label_quality(cls, cfg, step: int) -> float | None:
        """The cached pseudo-masks' mIoU (background + new classes) on the step's training images, once made."""
        from wilson_ray.weak import pipeline

        if step == 0:
            return None
        task = cls.task_view(get_task(cfg.data.task)).train
        quality = pipeline.read_quality(pipeline.mask_folder(cfg, task, step, cls.learner.name, cfg.method.args))
        return None if quality is None else quality["mask_miou"]

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        s_old = self.old_outputs(ctx, batch.images, upsample=True).logits
        with torch.no_grad():
            q = offline_mask_targets(batch.extras[PSEUDO_MASK], s_old, self.num_classes)
        return {"seg": offline_mask_loss(s, q)}


def wsss_method(learner: type[WeakLearner]) -> type[WsssRow]:
    """The table-row method of ``learner``: named as the learner, with the learner's ``Params``."""
    return type(
        f"{learner.__name__.removesuffix('Learner')}Row",
        (WsssRow,),
        {
            "name": learner.name,
            "Params": learner.Params,
            "learner": learner,
            "__module__": __name__,
            "__doc__": f"The {learner.name} row: {WsssRow.__doc__}",
        },
    )


# One row per registered weak learner (cam, seam, ss, eps).
METHODS = tuple(wsss_method(learner) for learner in LEARNERS.values())
