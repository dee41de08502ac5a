"""One file per method behind the small interface of ``base.Method``; ``get_method`` looks one up by name."""

from __future__ import annotations

from wilson_ray.errors import UserError
from wilson_ray.methods.base import Method
from wilson_ray.methods.cam_online import CamOnline
from wilson_ray.methods.finetune import Finetune
from wilson_ray.methods.ilt import ILT
from wilson_ray.methods.joint import Joint
from wilson_ray.methods.lwf import LwF
from wilson_ray.methods.mib import MiB
from wilson_ray.methods.plop import PLOP
from wilson_ray.methods.recall import RECALL
from wilson_ray.methods.sdr import SDR
from wilson_ray.methods.wilson import Wilson
from wilson_ray.methods.wsss import wsss_method
from wilson_ray.weak import LEARNERS

METHODS: dict[str, type[Method]] = {m.name: m for m in (Joint, Finetune, LwF, ILT, MiB, CamOnline, Wilson)}
METHODS.update({m.name: m for m in (PLOP, SDR, RECALL)})  # the paper's other pixel rows (baselines.md §1-§3)
# The image-label rows on offline pseudo-masks (cam, seam, ss, eps): one per registered weak learner.
METHODS.update({name: wsss_method(learner) for name, learner in LEARNERS.items()})


def get_method(name: str) -> type[Method]:
    """The method class called ``name``; a UserError lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method: unknown method {name!r}, expected one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "get_method"]
