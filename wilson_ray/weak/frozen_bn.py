"""Frozen BatchNorm of the WSSS nets: the ResNet-38 of SEAM, PSA's AffinityNet and SS keeps the ImageNet BN
statistics and affine parameters fixed (batch 8-16 is too small to re-estimate them).

With a random-init backbone (the CPU demo's ``small``) there are no statistics worth keeping, so the learners'
``frozen_bn`` knob defaults to None = "frozen when the backbone loads ImageNet weights".

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

from torch import nn


def wants_frozen_bn(setting: bool | None, pretrained: str | None) -> bool:
    """The ``frozen_bn`` knob resolved: True/False as given, None -> whether ImageNet weights are loaded."""
    return bool(pretrained) if setting is None else bool(setting)


def freeze_bn_(module: nn.Module) -> nn.Module:
    """Put every BatchNorm of ``module`` in eval mode with its affine parameters out of training; returns it."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    return module


class FrozenBNMixin:
    """For an ``nn.Module`` with a ``backbone`` and a ``frozen_bn`` flag: ``train()`` leaves the backbone's
    BatchNorm layers in eval mode, so ``net.train()`` never re-enables their running statistics."""

    frozen_bn: bool = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_bn:
            freeze_bn_(self.backbone)
        return self


__all__ = ["FrozenBNMixin", "freeze_bn_", "wants_frozen_bn"]
