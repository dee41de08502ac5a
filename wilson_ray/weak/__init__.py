"""Weakly-supervised pseudo-mask learners (baselines.md §0, §4-§6) behind ``base.WeakLearner``.

``LEARNERS`` maps a table row's name to its learner class; the shared adapter ``pipeline`` trains one, caches its
hard pseudo-masks and hands them to the step-3 segmentation training (``wilson_ray.methods.wsss``).
"""

from __future__ import annotations

from wilson_ray.weak.base import WeakLearner
from wilson_ray.weak.cam import CamLearner
from wilson_ray.weak.eps import EpsLearner
from wilson_ray.weak.seam import SeamLearner
from wilson_ray.weak.ss import SSLearner

# Table order of the paper (Table 1): CAM, SEAM, SS, EPS.
LEARNERS: dict[str, type[WeakLearner]] = {cls.name: cls for cls in (CamLearner, SeamLearner, SSLearner, EpsLearner)}


__all__ = ["LEARNERS"]
