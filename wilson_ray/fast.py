"""Fast-path helpers for the training iteration (issue 6), switched on by ``run.*`` config fields in
``step_setup.prepare_models`` / ``step_setup.make_optimizer`` (`wilson-ray train --fast` turns them all on).

What each helper is for, and what it changes numerically:

* :func:`freeze_old_model` — the frozen old model of a step >= 1 only ever runs forward, without gradient, in eval
  mode. Its BatchNorms can therefore be folded into the preceding convolutions (exact up to float rounding), it can
  run under ``torch.inference_mode`` and, with bf16 autocast, its weights can be stored in bf16 once instead of
  being cast by autocast on every call. Returns a module with the same ``(logits, body)`` interface.
* :func:`fold_conv_bn_` — the folding itself (eval-mode BN after a bias-free conv), in place.
* :func:`sgd` — SGD with the ``fused`` CPU/GPU kernel where this torch has it (one kernel over all parameters
  instead of a Python loop), same update rule as ``torch.optim.SGD``.
* :class:`ChannelsLastGradients` / :func:`channels_last_grad` — loss gradients come back from reductions in
  NCHW layout; made channels_last before they enter a channels_last network (identity in value).
* :func:`use_valid_taps_` — the ASPP's dilated 3x3 convolutions (dilation 6/12/18 on a 32x32 map at 512², output
  stride 16) are computed as one matrix product per kernel tap over only the output pixels whose input tap lies
  inside the image. Same sum without the multiplications by zero padding (39-77 % of the taps are valid), and
  oneDNN's dilated-convolution kernels, 3-4x slower per FLOP on CPU than its plain ones, are avoided. Exact up to
  float summation order; forward and backward.

* :func:`reuse_heap` — on glibc, freed tensor memory stays in the process's heap for the next iteration instead
  of going back to the kernel; no numerical change.

Benchmarks (``benchmarks/step.py``) measure each of these against the engine's current code path.
"""

from __future__ import annotations

import copy
import ctypes
import platform

import torch
from torch import nn

from wilson_ray.models.segmenter import ModelOutput


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` changed in place to compute ``bn(conv(x))`` for an eval-mode ``bn`` (running statistics).

    In place, not a new conv: a fresh weight per layer while the old one is still referenced would leave the
    freed weights behind as fragmented heap (+40 MB peak RSS for ResNet-101 on CPU)."""
    with torch.no_grad():
        scale = (
            bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
        )
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        bias = conv.bias * scale + shift if conv.bias is not None else shift
        conv.weight.requires_grad_(False).mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return conv


def fold_conv_bn_(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place; returns the number folded.

    Recognised patterns (all those of the models in ``wilson_ray.models``): attributes ``convN``/``bnN`` of
    torchvision blocks and of the ResNet stem, ``downsample = Sequential(conv, bn)``, and ``Sequential(conv,
    Sequential(bn, act))`` / ``(conv, bn)`` pairs (WRN-38's ``convs``). The head's ``map_bn`` follows a
    concatenation and a pre-activation block's ``bn1`` precedes its convs: both are left alone.
    Only valid for a module that stays in eval mode.
    """
    count = 0
    for parent in list(module.modules()):
        # torchvision Bottleneck / BasicBlock and the ResNet stem: conv1/bn1, conv2/bn2, conv3/bn3. Not inside a
        # Sequential: its order is known (rule below), and a pre-activation block's ``convs`` (WRN-38: conv1, bn2,
        # conv2, bn3, conv3) has bnN *before* convN.
        for i in (1, 2, 3) if not isinstance(parent, nn.Sequential) else ():
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

    Under ``inference_mode`` outputs are cloned out of it (the losses save ``f_old`` / ``σ(s_old)`` for backward,
    which inference tensors may not be); under ``no_grad`` (``inference_mode=False``) they are returned as they are,
    with no extra copy. Either way they are bit-identical in layout to the original model's outputs.
    """

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype | None = None,
        fold_bn: bool = True,
        inference_mode: bool = True,
        in_place: bool = False,
    ):
        super().__init__()
        self.inference_mode = inference_mode  # False: no_grad (what torch.compile can trace)
        # in_place: the caller hands the model over. A deep copy made while the eager model is alive doubles the
        # weights during the build and leaves the freed copy as fragmented heap (+80-160 MB peak RSS on CPU).
        model = (model if in_place else copy.deepcopy(model)).eval().requires_grad_(False)
        self.folded = fold_conv_bn_(model) if fold_bn else 0
        if dtype is not None:
            model.to(dtype)
        self.model = model
        self.dtype = dtype

    def train(self, mode: bool = True):  # always eval: folded BNs are only valid with running statistics
        return super().train(False)

    def forward(self, x: torch.Tensor, upsample: bool = True, maps: bool = False):
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            if self.dtype is not None:
                # Own dtype, no autocast: the weights are already cast, inputs follow.
                with torch.autocast(x.device.type, enabled=False):
                    out = self.model(x.to(self.dtype), upsample=upsample, maps=maps)
            else:
                out = self.model(x, upsample=upsample, maps=maps)
        if not self.inference_mode:
            return ModelOutput(out.logits, out.features, maps=out.maps if maps else None)
        return ModelOutput(
            out.logits.clone(), out.features.clone(), maps=tuple(m.clone() for m in out.maps) if maps else None
        )


def freeze_old_model(
    model: nn.Module, amp: str = "none", fold_bn: bool = True, inference_mode: bool = True, in_place: bool = False
) -> FrozenOldModel:
    """A :class:`FrozenOldModel` of ``model``; with ``amp='bf16'`` its weights are stored in bf16, as autocast
    would compute them (convolutions in bf16), so outputs match autocast up to the BN-folding rounding.
    ``inference_mode=False`` runs it under ``no_grad`` instead (for ``torch.compile``, and without the output
    copies); ``in_place=True`` folds ``model`` itself instead of a copy (the caller must not use it again)."""
    dtype = torch.bfloat16 if amp == "bf16" else None
    return FrozenOldModel(model, dtype=dtype, fold_bn=fold_bn, inference_mode=inference_mode, in_place=in_place)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_heap_reused = False


def reuse_heap() -> bool:
    """Keep freed memory in the process's heap (glibc ``mallopt``: no mmap'd chunks, top trimmed only above 2 GiB);
    returns whether it is in effect (False where the C library is not glibc). Process-wide and kept until exit.

    Why: PyTorch's CPU allocator has no cache of its own, and glibc serves every allocation above its mmap
    threshold (adaptive, at most 32 MiB) with fresh pages that it unmaps on free, so each training iteration
    faults its activations in again: ~300 thousand minor page faults per ResNet-101 WILSON step-1 iteration at
    2 x 512², 6 % of its fp32 time on an EPYC Zen 4 (BENCHMARKS.md §1D). Reused heap blocks fault once. The cost:
    memory freed by one iteration is not returned to the system before the process ends, and big blocks split by
    small ones raise the peak (+100-190 MB, 3-5 %, at 2 x 512²)."""
    global _heap_reused
    if _heap_reused:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # trim first: with mmap off, a block freed at the heap's top would otherwise go back at the default 128 KiB
    _heap_reused = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _heap_reused


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


# ---------------------------------------------------------------------------------------------------------------
# Gradient memory format


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward returns the gradient in channels_last layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; its gradient is made channels_last before it flows back into the network.

    Loss gradients come back contiguous (NCHW) from reductions such as ``mean()`` / ``F.mse_loss`` / BCE with
    ``reduction='none'`` + ``mean``; fed into a channels_last network they make every convolution backward of the
    head reorder its inputs, and every gradient accumulation into the body features take the mixed-layout
    ``add_`` path (about 20 ms per [2, 2048, 32, 32] add here instead of 0.7 ms)."""
    if x.dim() != 4 or not x.requires_grad:
        return x
    return _ChannelsLastGrad.apply(x)


class ChannelsLastGradients(nn.Module):
    """Wraps a module returning a ``ModelOutput`` (``Trainable``): every tensor output gets
    :func:`channels_last_grad`. Attribute access falls through to the wrapped module."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return ModelOutput(
            *(
                None
                if v is None
                else tuple(map(channels_last_grad, v))
                if isinstance(v, tuple)
                else channels_last_grad(v)
                for v in out
            )
        )


# ---------------------------------------------------------------------------------------------------------------
# Dilated convolutions as per-tap matrix products over the valid region


def _taps(h: int, w: int, kh: int, kw: int, dilation: tuple[int, int]):
    """(ky, kx, input window, output window) of every kernel tap that reads at least one pixel inside the map,
    for a stride-1 convolution with 'same' padding dilation*(k//2). Windows are (y0, y1, x0, x1)."""
    out = []
    for ky in range(kh):
        dy = (ky - kh // 2) * dilation[0]
        oy0, oy1 = max(0, -dy), min(h, h - dy)
        if oy0 >= oy1:
            continue
        for kx in range(kw):
            dx = (kx - kw // 2) * dilation[1]
            ox0, ox1 = max(0, -dx), min(w, w - dx)
            if ox0 >= ox1:
                continue
            out.append((ky, kx, (oy0 + dy, oy1 + dy, ox0 + dx, ox1 + dx), (oy0, oy1, ox0, ox1)))
    return out


def _win(t: torch.Tensor, win) -> torch.Tensor:
    """[B, H, W, C] window as a [n, C] matrix."""
    y0, y1, x0, x1 = win
    return t[:, y0:y1, x0:x1, :].reshape(-1, t.shape[-1])


def _valid_taps_forward(x: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xm = x.permute(0, 2, 3, 1)  # channels_last storage: a view
    acc_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 sums for bf16/fp16 inputs
    acc = torch.zeros(b, h, w, o, dtype=acc_dtype, device=x.device)
    for ky, kx, iwin, owin in _taps(h, w, kh, kw, dilation):
        y0, y1, x0, x1 = owin
        part = _win(xm, iwin) @ weight[:, :, ky, kx].t()
        acc[:, y0:y1, x0:x1, :] += part.view(b, y1 - y0, x1 - x0, o)
    return acc.to(x.dtype).permute(0, 3, 1, 2)  # [B, O, H, W] in channels_last layout


class _ValidTapsConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return _valid_taps_forward(x, weight, dilation)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        g = grad_out.to(x.dtype).permute(0, 2, 3, 1)
        xm = x.permute(0, 2, 3, 1)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        gx = torch.zeros(b, h, w, c, dtype=acc_dtype, device=x.device) if need_x else None
        gw = torch.zeros(o, c, kh, kw, dtype=acc_dtype, device=x.device) if need_w else None
        for ky, kx, iwin, owin in _taps(h, w, kh, kw, ctx.dilation):
            gwin = _win(g, owin)  # [n, O]
            if need_x:
                y0, y1, x0, x1 = iwin
                gx[:, y0:y1, x0:x1, :] += (gwin @ weight[:, :, ky, kx]).view(b, y1 - y0, x1 - x0, c)
            if need_w:
                gw[:, :, ky, kx] += gwin.t() @ _win(xm, iwin)
        gx = gx.to(x.dtype).permute(0, 3, 1, 2) if need_x else None
        return gx, (gw.to(weight.dtype) if need_w else None), None


class ValidTapsConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, 'same' padding = dilation·(k//2), groups 1) computed by :class:`_ValidTapsConv`.

    Same parameters and state-dict keys as the convolution it replaces; under autocast it computes in the autocast
    dtype like a convolution does (weights cast per call, gradients flow to the fp32 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            x, weight = x.to(dt), weight.to(dt)
        elif x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev, enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
                out = _ValidTapsConv.apply(x, weight, self.dilation)
            else:
                out = _valid_taps_forward(x, weight, self.dilation)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(1, -1, 1, 1)
        return out


def _valid_taps_ok(conv: nn.Module, min_dilation: int) -> bool:
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.stride != (1, 1):
        return False
    if conv.padding_mode != "zeros" or min(conv.dilation) < min_dilation:
        return False
    kh, kw = conv.kernel_size
    return conv.padding == (conv.dilation[0] * (kh // 2), conv.dilation[1] * (kw // 2)) and kh % 2 == kw % 2 == 1


def use_valid_taps_(module: nn.Module, min_dilation: int = 4) -> int:
    """Switch every stride-1 'same'-padded Conv2d with dilation >= ``min_dilation`` (the ASPP branches; the
    backbone's dilation-2 stage is fast in oneDNN and left alone) to :class:`ValidTapsConv2d`, in place, keeping the
    very same parameter objects (so optimisers and state dicts are unaffected). Returns the number switched."""
    n = 0
    for m in module.modules():
        if _valid_taps_ok(m, min_dilation):
            m.__class__ = ValidTapsConv2d
            n += 1
    return n


def use_plain_convs_(module: nn.Module) -> int:
    """Undo :func:`use_valid_taps_` (e.g. to count nominal FLOPs); returns the number switched back."""
    n = 0
    for m in module.modules():
        if type(m) is ValidTapsConv2d:
            m.__class__ = nn.Conv2d
            n += 1
    return n


__all__ = [
    "ChannelsLastGradients",
    "FrozenOldModel",
    "ValidTapsConv2d",
    "channels_last_grad",
    "fold_conv_bn_",
    "freeze_old_model",
    "sgd",
    "use_plain_convs_",
    "use_valid_taps_",
]
