"""Fast-path helpers for the training iteration (issue 6), kept out of ``engine.py`` until the engine adopts them.

What each helper is for, and what it changes numerically:

* :func:`freeze_old_model` — the frozen old model of a step >= 1 only ever runs forward, without gradient, in eval
  mode. Its BatchNorms can therefore be folded into the preceding convolutions (exact up to float rounding), it can
  run under ``torch.inference_mode`` and, with bf16 autocast, its weights can be stored in bf16 once instead of
  being cast by autocast on every call. Returns a module with the same ``(logits, body)`` interface.
* :func:`fold_conv_bn_` — the folding itself (eval-mode BN after a bias-free conv), in place.
* :func:`sgd` — SGD with the ``fused`` CPU/GPU kernel where this torch has it (one kernel over all parameters
  instead of a Python loop), same update rule as ``torch.optim.SGD``.

Benchmarks (``benchmarks/step.py``) measure each of these against the engine's current code path.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to ``bn(conv(x))`` for an eval-mode ``bn`` (running statistics)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.detach()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    fused.weight = nn.Parameter(w * scale.view(-1, 1, 1, 1), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)
    return fused


def fold_conv_bn_(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place; returns the number folded.

    Recognised patterns (all those of the models in ``wilson_ray.models``): attributes ``convN``/``bnN`` of
    torchvision blocks and of the ResNet stem, ``downsample = Sequential(conv, bn)``, and ``Sequential(conv,
    Sequential(bn, act))`` / ``(conv, bn)`` pairs. The head's ``map_bn`` follows a concatenation and is left alone.
    Only valid for a module that stays in eval mode.
    """
    count = 0
    for parent in list(module.modules()):
        # torchvision Bottleneck / BasicBlock and the ResNet stem: conv1/bn1, conv2/bn2, conv3/bn3
        for i in (1, 2, 3):
            conv, bn = getattr(parent, f"conv{i}", None), getattr(parent, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, f"conv{i}", _fold(conv, bn))
                setattr(parent, f"bn{i}", nn.Identity())
                count += 1
        if isinstance(parent, nn.Sequential):
            children = list(parent)
            for j in range(len(children) - 1):
                conv, nxt = children[j], children[j + 1]
                if not isinstance(conv, nn.Conv2d):
                    continue
                if isinstance(nxt, nn.BatchNorm2d):
                    parent[j], parent[j + 1] = _fold(conv, nxt), nn.Identity()
                    count += 1
                elif isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], nn.BatchNorm2d):
                    parent[j] = _fold(conv, nxt[0])
                    nxt[0] = nn.Identity()
                    count += 1
    return count


class FrozenOldModel(nn.Module):
    """The old model as a pure inference function: folded BN, optional bf16 weights, ``inference_mode``.

    Outputs are cloned out of inference mode (the losses save ``f_old`` / ``σ(s_old)`` for backward, which
    inference tensors may not be) and are bit-identical in layout to the original model's outputs.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None, fold_bn: bool = True):
        super().__init__()
        model = copy.deepcopy(model).eval().requires_grad_(False)
        self.folded = fold_conv_bn_(model) if fold_bn else 0
        if dtype is not None:
            model.to(dtype)
        self.model = model
        self.dtype = dtype

    def train(self, mode: bool = True):  # always eval: folded BNs are only valid with running statistics
        return super().train(False)

    def forward(self, x: torch.Tensor, upsample: bool = True):
        with torch.inference_mode():
            if self.dtype is not None:
                # Own dtype, no autocast: the weights are already cast, inputs follow.
                with torch.autocast(x.device.type, enabled=False):
                    logits, body = self.model(x.to(self.dtype), upsample=upsample)
            else:
                logits, body = self.model(x, upsample=upsample)
        return logits.clone(), body.clone()


def freeze_old_model(model: nn.Module, amp: str = "none", fold_bn: bool = True) -> FrozenOldModel:
    """A :class:`FrozenOldModel` of ``model``; with ``amp='bf16'`` its weights are stored in bf16, as autocast
    would compute them (convolutions in bf16), so outputs match autocast up to the BN-folding rounding."""
    dtype = torch.bfloat16 if amp == "bf16" else None
    return FrozenOldModel(model, dtype=dtype, fold_bn=fold_bn)


def sgd(params, lr: float, momentum: float, nesterov: bool, weight_decay: float, fused: bool | None = None):
    """``torch.optim.SGD`` with ``fused=True`` when available (torch >= 2.4 on CPU and CUDA); falls back to the
    default implementation otherwise. ``fused=False`` forces the default."""
    kwargs = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if fused is not False:
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.SGD(params, **kwargs)


__all__ = ["FrozenOldModel", "fold_conv_bn_", "freeze_old_model", "sgd"]
