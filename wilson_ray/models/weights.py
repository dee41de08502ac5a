"""ImageNet weights for the encoder: local torchvision-format files, torchvision's hub, and conversion of the
Mapillary InPlace-ABN checkpoints used by WILSON (method.md §2.5): ResNet-101 (``resnet101_iabn_sync.pth.tar``) and
Wide-ResNet-38 A2 (``wide_resnet38_ipabn_lr_256.pth.tar``)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from wilson_ray.checkpoint import read_weights_only
from wilson_ray.errors import UserError

_HUB_HOST = ("download.pytorch.org", 443)
_CONNECT_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 60.0

# Mapillary layout -> torchvision layout; mod2..mod5 are layer1..layer4 and blocks count from 1.
_IABN_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        (r"^mod1\.conv1\.(\w+)$", "conv1.{0}"),
        (r"^mod1\.bn1\.(\w+)$", "bn1.{0}"),
        (r"^mod([2-5])\.block(\d+)\.convs\.conv([123])\.(\w+)$", "layer{L}.{B}.conv{2}.{3}"),
        (r"^mod([2-5])\.block(\d+)\.convs\.bn([123])\.(\w+)$", "layer{L}.{B}.bn{2}.{3}"),
        (r"^mod([2-5])\.block(\d+)\.proj_conv\.(\w+)$", "layer{L}.{B}.downsample.0.{2}"),
        (r"^mod([2-5])\.block(\d+)\.proj_bn\.(\w+)$", "layer{L}.{B}.downsample.1.{2}"),
    )
)
# Classifier: not part of the body. bn_out: the final BN+act of pre-activation nets (WRN-38); a post-activation
# ResNet has no place for it.
_IABN_DROPPED = re.compile(r"^(classifier\.|bn_out\.)")
# Wide-ResNet-38 A2 (pre-activation blocks, mod1..mod7): wideresnet.WideResNet38 uses the checkpoint's own names,
# so these rules only validate; its bn_out is part of the body and kept.
_WRN_RULES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"^mod1\.conv1\.weight$",
        r"^mod[2-7]\.block\d+\.bn1\.\w+$",
        r"^mod[2-7]\.block\d+\.convs\.(conv[123]\.weight|bn[23]\.\w+)$",
        r"^mod[2-7]\.block\d+\.proj_conv\.weight$",
        r"^bn_out\.\w+$",
    )
)
_WRN_DROPPED = re.compile(r"^classifier\.")
# Only the pre-activation net has mod6/mod7 or a BN at block level (the ResNet's BNs sit inside ``convs``).
_WRN_MARKER = re.compile(r"^(mod[67]\.|mod\d\.block\d+\.bn1\.)")
IABN_PREFIX = "iabn:"  # model.pretrained "iabn:<path>": a Mapillary InPlace-ABN checkpoint


def _hub_weights(arch: str) -> torchvision.models.WeightsEnum:
    table = {
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
        "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V2,
    }
    if arch not in table:
        raise UserError(
            f"model.pretrained: found 'torchvision' for backbone {arch!r}, "
            f"expected a backbone with torchvision ImageNet weights ({', '.join(table)}) or pretrained 'none'"
        )
    return table[arch]


def hub_cache_path(url: str) -> Path:
    """Where torch.hub caches the file of ``url`` (``<hub dir>/checkpoints/<file name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _online(host: tuple[str, int] = _HUB_HOST, timeout: float = _CONNECT_TIMEOUT_S) -> bool:
    """True if a TCP connection to ``host`` opens within ``timeout`` seconds (never blocks longer)."""
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def _read_checkpoint(path: Path, what: str) -> object:
    return read_weights_only(
        path, what, expected="a PyTorch checkpoint file", unreadable_expected="a state dict saved with torch.save"
    )


def _as_state_dict(obj: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {list(obj)[:5]}"
        raise UserError(f"{what}: {str(path)!r} holds {found}, expected a state dict of tensors")
    return dict(obj)


def _is_iabn_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.removeprefix("module.").startswith("mod1.") for k in state)


def _is_wrn_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(_WRN_MARKER.match(k.removeprefix("module.")) for k in state)


def _iabn_wrn38(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Validate a Mapillary InPlace-ABN Wide-ResNet-38 A2 state dict and return it under WideResNet38's names
    (``module.`` stripped, classifier dropped); every key of the net must be present."""
    from wilson_ray.models.wideresnet import WideResNet38  # wideresnet -> backbone; weights stays importable alone

    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _WRN_DROPPED.match(key):
            continue
        if any(rule.match(key) for rule in _WRN_RULES):
            out[key] = value  # IABN affine/running stats have BN's names and shapes
        else:
            unknown.append(key)
    if unknown:
        raise UserError(
            f"{source}: {len(unknown)} keys do not fit the InPlace-ABN Wide-ResNet-38 layout (e.g. {unknown[:3]}), "
            "expected mod1.conv1, mod2..mod7.blockN.bn1 / convs.convK / convs.bnK / proj_conv, bn_out, classifier.fc"
        )
    with torch.device("meta"):  # the key set only: no memory, no init cost
        expected = [k for k in WideResNet38().state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in out]
    if missing:
        raise UserError(
            f"{source}: {len(missing)} keys of Wide-ResNet-38 are missing (e.g. {missing[:3]}), "
            "expected a complete wide_resnet38 InPlace-ABN checkpoint (block counts 3/3/6/3/1/1)"
        )
    return out


def _convert_iabn(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Names of the InPlace-ABN state dict ``state`` in this toolkit's backbones: WRN-38 or torchvision ResNet."""
    if _is_wrn_layout(state):
        return _iabn_wrn38(state, source)
    return _iabn_to_torchvision(state, source)


def _iabn_to_torchvision(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename a Mapillary InPlace-ABN ResNet state dict to torchvision names (table-driven)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _IABN_DROPPED.match(key):
            continue
        for pattern, template in _IABN_RULES:
            match = pattern.match(key)
            if match:
                groups = match.groups()
                layer_block = {}
                if template.startswith("layer"):
                    layer_block = {"L": int(groups[0]) - 1, "B": int(groups[1]) - 1}
                # IABN affine/running stats have BN's names and shapes, so values copy unchanged.
                out[template.format(*groups, **layer_block)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise UserError(
            f"{source}: {len(unknown)} keys do not fit the InPlace-ABN ResNet layout (e.g. {unknown[:3]}), "
            "expected mod1.conv1/bn1, mod2..mod5.blockN.convs.convK/bnK, proj_conv/proj_bn, classifier.fc"
        )
    return out


def convert_iabn_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Convert a Mapillary InPlace-ABN ImageNet checkpoint (method.md §2.5) to a backbone state dict.

    ResNet (``resnet101_iabn_sync.pth.tar``): torchvision names; strips ``module.``, drops the classifier, maps
    mod1 -> conv1/bn1 and mod2..mod5 -> layer1..layer4. Wide-ResNet-38 A2 (``wide_resnet38_ipabn_lr_256.pth.tar``,
    recognised by mod6/mod7 and block-level ``bn1``): :class:`~wilson_ray.models.wideresnet.WideResNet38` names
    (the checkpoint's own without ``module.``), classifier dropped, ``bn_out`` kept, every key required.
    """
    p = Path(path)
    state = _as_state_dict(_read_checkpoint(p, "iabn checkpoint"), p, "iabn checkpoint")
    if not _is_iabn_layout(state):
        raise UserError(
            f"iabn checkpoint: {str(p)!r} has keys like {list(state)[:3]}, "
            "expected the InPlace-ABN layout ('module.mod1.conv1.weight', ...)"
        )
    return _convert_iabn(state, f"iabn checkpoint {str(p)!r}")


def _load_into(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load of ``state`` (without ``fc.*``) into ``backbone`` with a one-line error on any mismatch."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    # BN step counters are bookkeeping, absent from converted IABN checkpoints; they may be missing.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        arch = getattr(backbone, "arch", "?")
        wanted = (
            "a Wide-ResNet-38 state dict (InPlace-ABN mod1..mod7 names)"
            if arch == "wideresnet38"
            else "a torchvision-format ResNet state dict of the same depth"
        )
        raise UserError(
            f"model.pretrained: {source} does not match backbone {arch!r}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); expected {wanted}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items() if v.shape != expected[k].shape
    ]
    if wrong:
        raise UserError(
            f"model.pretrained: {source} has {len(wrong)} tensors of the wrong shape (e.g. {wrong[:3]}), "
            f"expected the shapes of backbone {getattr(backbone, 'arch', '?')!r}"
        )
    backbone.load_state_dict(state, strict=False)


def _torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    weights = _hub_weights(arch)
    cached = hub_cache_path(weights.url)
    if cached.is_file():
        return _as_state_dict(_read_checkpoint(cached, "model.pretrained"), cached, "model.pretrained")
    if not _online():
        raise UserError(
            f"model.pretrained: 'torchvision' weights for {arch} are not cached at {str(cached)!r} and "
            f"{_HUB_HOST[0]} is unreachable (offline); expected a local file: set pretrained to the path of a "
            "torchvision ResNet .pth state dict or an InPlace-ABN .pth.tar, or copy the file to that cache path"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # a stalled transfer must fail, not hang the worker
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False)
    except Exception as err:  # noqa: BLE001 - network/IO failures of every kind become one user message
        raise UserError(
            f"model.pretrained: downloading {weights.url} failed ({type(err).__name__}: {err}); "
            "expected a reachable download or a local weights file path in pretrained"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
    return dict(state)


def load_backbone_weights(backbone: nn.Module, source: str | None) -> None:
    """Load ImageNet weights into a ``build_backbone`` module (method.md §2.5).

    ``source``: ``None``/``"none"`` keeps the random init; ``"torchvision"`` uses torchvision's
    IMAGENET1K_V2 ResNet weights from the hub cache, downloading only if the host answers within 3 s;
    ``"iabn:<path>"`` a Mapillary InPlace-ABN checkpoint (``module.`` prefix, BN parameters and running
    statistics in the fused ``bn`` modules; ResNet or Wide-ResNet-38), converted with
    :func:`convert_iabn_checkpoint`'s mapping;
    otherwise a path to a torchvision-format ResNet state dict (``fc.*`` dropped, strict on the rest) or to a
    Mapillary InPlace-ABN checkpoint (converted with :func:`convert_iabn_checkpoint`'s mapping).
    """
    if source is None or str(source).lower() == "none":
        return
    if source == "torchvision":
        _load_into(backbone, _torchvision_state(getattr(backbone, "arch", "?")), "torchvision ImageNet weights")
        return
    if str(source).startswith(IABN_PREFIX):
        path = Path(str(source)[len(IABN_PREFIX) :]).expanduser()
        state = _as_state_dict(_read_checkpoint(path, "model.pretrained"), path, "model.pretrained")
        if not _is_iabn_layout(state):
            raise UserError(
                f"model.pretrained: {str(path)!r} (given as {IABN_PREFIX}) has keys like {list(state)[:3]}, "
                "expected the InPlace-ABN layout ('module.mod1.conv1.weight', ...)"
            )
        _load_into(backbone, _convert_iabn(state, f"model.pretrained {str(path)!r}"), repr(str(path)))
        return
    path = Path(source).expanduser()
    state = _as_state_dict(_read_checkpoint(path, "model.pretrained"), path, "model.pretrained")
    if _is_iabn_layout(state):
        state = _convert_iabn(state, f"model.pretrained {str(path)!r}")
    _load_into(backbone, state, repr(str(path)))
