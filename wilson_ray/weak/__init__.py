"""Weakly-supervised pseudo-mask learners (baselines.md §0, §4-§6) behind ``base.WeakLearner``.

``LEARNERS`` maps a table row's name to its learner class; the shared adapter ``pipeline`` trains one, caches its
hard pseudo-masks and hands them to the step-3 segmentation training (``wilson_ray.methods.wsss``).
"""

from __future__ import annotations

from wilson_ray.weak.base import LearnerSchedule, WeakLearner, denormalize, multiscale_flip

LEARNERS: dict[str, type[WeakLearner]] = {}


def register(cls: type[WeakLearner]) -> type[WeakLearner]:
    """Add ``cls`` to ``LEARNERS`` under its ``name``."""
    LEARNERS[cls.name] = cls
    return cls


__all__ = ["LEARNERS", "LearnerSchedule", "WeakLearner", "denormalize", "multiscale_flip", "register"]
