"""The norm + activation every encoder and head builds, and the names of the encoder stages (method.md §2.1).

Every norm is a plain ``nn.BatchNorm2d`` so ``nn.SyncBatchNorm.convert_sync_batchnorm`` works unchanged; the
activation is LeakyReLU(0.01) (``bn_leaky``, the InPlace-ABN equivalent of §2.4) or ReLU (``bn_relu``). Both
encoders (``backbone.py``, ``wideresnet.py``) and the heads build on this module, so neither encoder imports the
other.
"""

from __future__ import annotations

from torch import nn

from wilson_ray.errors import UserError

NORMS = ("bn_leaky", "bn_relu")
# forward_features keys, shallow to deep; every backbone returns all of them (see ResNetBody.forward_features).
STAGES = ("conv3", "conv4", "conv5", "conv6", "out")
LEAKY_SLOPE = 0.01


def check_norm(norm: str) -> None:
    """Raise UserError unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise UserError(f"model.norm: found {norm!r}, expected one of {', '.join(NORMS)}")


def activation(norm: str) -> nn.Module:
    """The activation that follows every BN for ``norm`` (LeakyReLU 0.01 as InPlace-ABN, §2.1/§2.4, or ReLU)."""
    check_norm(norm)
    if norm == "bn_leaky":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    return nn.ReLU(inplace=True)


def norm_act(channels: int, norm: str) -> nn.Sequential:
    """BatchNorm2d followed by the activation of ``norm`` (the "BN+act" of method.md §2.2/§2.3)."""
    return nn.Sequential(nn.BatchNorm2d(channels), activation(norm))


__all__ = ["LEAKY_SLOPE", "NORMS", "STAGES", "activation", "check_norm", "norm_act"]
