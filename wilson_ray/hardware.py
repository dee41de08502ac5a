"""What the machine can do fast, asked of torch/oneDNN, and the speed switches that follow from it (issue 16).

bf16 autocast is the fast path's biggest lever on a CPU with native bf16 (AMX / AVX512-BF16: 1.8x) and on a GPU,
and a trap on a CPU without it: oneDNN then emulates bf16, and a ResNet-101 WILSON step-1 iteration at 4x256² ran
~17x slower than fp32 eager on an AVX2 AMD EPYC (issue 16). ``resolve_amp`` turns ``run.amp: auto`` into the
right choice per device; ``fast_path_plan`` gives the other fast-path switches per hardware kind, as measured
(BENCHMARKS.md, "Per CPU kind").

Core module: imports torch only.
"""

from __future__ import annotations

import functools
import platform
import warnings
from dataclasses import dataclass

import torch

from wilson_ray.errors import UserError

AMP_CHOICES = ("auto", "none", "bf16", "fp16")

# Measured on an AVX2 AMD EPYC without native bf16 (issue 16, 2026-11-25): the shipped fast path with bf16,
# ResNet-101 WILSON step 1 at 4x256², 96.07 s median against 5.61 s for fp32 eager.
BF16_EMULATED_SLOWDOWN = "~17x slower than fp32 (ResNet-101 WILSON step 1, 4x256², AVX2 AMD EPYC, issue 16)"


class HardwareWarning(UserWarning):
    """A requested setting that this hardware runs much slower than the alternative."""


@dataclass(frozen=True)
class CpuCapability:
    """The CPU as torch sees it: ``isa`` is ``torch.backends.cpu.get_cpu_capability()`` (``AVX2``, ``AVX512``,
    ...), ``native_bf16`` oneDNN's own answer to "are bf16 kernels native here", ``amx`` whether AMX tiles are
    usable (``amx_bf16``), ``model`` the ``model name`` of /proc/cpuinfo."""

    model: str
    isa: str
    native_bf16: bool
    amx: bool
    avx512_bf16: bool = False

    def label(self) -> str:
        """Short capability text, e.g. ``AVX2, no native bf16`` or ``AVX512, AMX, native bf16``."""
        parts = [self.isa]
        if self.amx:
            parts.append("AMX")
        elif self.avx512_bf16:
            parts.append("AVX512-BF16")
        parts.append("native bf16" if self.native_bf16 else "no native bf16")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """JSON-friendly fields (benchmarks, MLflow params)."""
        return {
            "cpu_model": self.model,
            "cpu_isa": self.isa,
            "cpu_native_bf16": self.native_bf16,
            "cpu_amx": self.amx,
            "cpu_avx512_bf16": self.avx512_bf16,
            "cpu_capability": self.label(),
        }


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not model and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif not flags and line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def _ask(fn_path: tuple[object, ...]) -> bool | None:
    """Call a torch capability probe if this torch build has it (private APIs move between releases)."""
    obj = fn_path[0]
    for name in fn_path[1:]:
        obj = getattr(obj, name, None)  # type: ignore[arg-type]
        if obj is None:
            return None
    try:
        return bool(obj())  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a probe that fails means "unknown", never a crash at start-up
        return None


@functools.lru_cache(maxsize=1)
def cpu_capability() -> CpuCapability:
    """The CPU's vector ISA (as dispatched by torch), native bf16 (oneDNN), AMX and model name; cached."""
    model, flags = _cpuinfo()
    try:
        isa = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        isa = "unknown"
    bf16 = _ask((torch.ops.mkldnn, "_is_mkldnn_bf16_supported"))
    amx = _ask((torch, "cpu", "_is_amx_tile_supported"))
    if amx is None:
        amx = "amx_bf16" in flags and "amx_tile" in flags
    avx512_bf16 = _ask((torch, "cpu", "_is_avx512_bf16_supported"))
    if avx512_bf16 is None:
        avx512_bf16 = "avx512_bf16" in flags
    if bf16 is None:  # no oneDNN probe in this build: fall back on the CPU flags oneDNN itself keys on
        bf16 = bool(amx or avx512_bf16)
    return CpuCapability(model=model, isa=isa, native_bf16=bool(bf16), amx=bool(amx), avx512_bf16=bool(avx512_bf16))


def cuda_bf16_supported(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively (Ampere and later)."""
    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation argument
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported())


def cuda_name(device: torch.device) -> str:
    """The CUDA device's name, or ``CUDA`` when it cannot be asked."""
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001
        return "CUDA"


def hardware_kind(device: torch.device | str) -> str:
    """``cuda``, ``cpu_bf16`` (CPU with native bf16: AMX / AVX512-BF16) or ``cpu`` (CPU without, e.g. AVX2)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda"
    return "cpu_bf16" if cpu_capability().native_bf16 else "cpu"


_warned: set[str] = set()


def resolve_amp(requested: str, device: torch.device | str) -> str:
    """The autocast mode to run with: ``none``, ``bf16`` or ``fp16``.

    ``auto``: bf16 on a CUDA device with native bf16, fp16 (with a GradScaler) on a CUDA device without, bf16 on a
    CPU with native bf16, else none (fp32). An explicit ``bf16`` on a CPU without native bf16 is kept (the user
    asked) but warns once per process with the measured cost; ``fp16`` on a CPU is a UserError.
    """
    device = torch.device(device)
    if requested not in AMP_CHOICES:
        raise UserError(f"run.amp: {requested!r} is not an amp mode, expected one of {', '.join(AMP_CHOICES)}")
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if cuda_bf16_supported(device) else "fp16"
        return requested
    if requested == "fp16":
        raise UserError("run.amp: fp16 needs a CUDA device; use auto, bf16 or none on the CPU")
    if requested == "auto":
        return "bf16" if cpu_capability().native_bf16 else "none"
    if requested == "bf16" and not cpu_capability().native_bf16 and "bf16-cpu" not in _warned:
        _warned.add("bf16-cpu")
        cap = cpu_capability()
        # warn_explicit with a source-less location: stderr gets exactly one line, not the caller's code too
        warnings.warn_explicit(
            f"run.amp: bf16 on a CPU without native bf16 ({cap.model}, {cap.label()}) is "
            f"emulated, measured {BF16_EMULATED_SLOWDOWN}; use run.amp: auto (fp32 here)",
            HardwareWarning,
            filename="wilson-ray",
            lineno=0,
            module="wilson_ray.hardware",
        )
    return requested


def describe_amp_choice(requested: str, resolved: str, device: torch.device | str) -> str:
    """One line for the start of a run, e.g. ``amp: auto -> none (CPU AMD EPYC, AVX2, no native bf16)``."""
    device = torch.device(device)
    if device.type == "cuda":
        what = f"{cuda_name(device)}, {'bf16' if cuda_bf16_supported(device) else 'no bf16'}"
        where = f"CUDA {what}"
    else:
        cap = cpu_capability()
        where = f"CPU {cap.model}, {cap.label()}"
    arrow = f"{requested} -> {resolved}" if requested != resolved else resolved
    return f"amp: {arrow} ({where})"


# The fast path's switches other than amp, per hardware kind, as measured (BENCHMARKS.md §1, "Per CPU kind").
# cpu_bf16 (AMX Xeon, bf16): every switch a win or within noise, and the bf16 frozen old model halves its weights.
# cpu (AVX2, fp32; paired against fp32 eager at ResNet-101 4x256²): channels_last 1.12x, valid taps 1.12x, fused
# SGD's step 5x faster than the foreach one; the frozen old model gains only ~3 % per iteration in fp32 (within
# noise), so it stays off there. (It also used to raise the peak RSS by 110-200 MB; folded in place since
# 2026-11-26 it no longer does: 3604 vs 3666-3678 MB at 2x512².)
# reuse_heap (both CPU kinds; measured on an EPYC Zen 4, ResNet-101 step 1, BENCHMARKS.md §1D): -6.3 % per fp32
# iteration at 2x512² (within noise at 4x256²), -4 % in bf16 at 4x256², the page faults of re-allocated activations
# gone, +100-190 MB peak; glibc only, a no-op elsewhere.
# Off on CUDA, where the iteration's tensors live in the caching allocator's device memory.
# cuda (H200, ResNet-101 step 1 at 512², paired against fp32 eager): the eager switches gave 1.67x at batch 24 but
# 0.85-0.89x at batch 2 (launch-bound); torch.compile on top gave 2.15x at batch 24 and 1.01x at batch 2 (about
# 2 minutes of compilation on the GPU host's 16 cores, cached by inductor across runs), so it is on for CUDA only:
# on a 2-core CPU compiling ResNet-101 takes far longer than the training it would speed up.
FAST_PATH_PLANS: dict[str, dict[str, bool]] = {
    "cpu_bf16": {
        "channels_last": True,
        "frozen_old_model": True,
        "valid_taps": True,
        "fused_sgd": True,
        "compile": False,
        "reuse_heap": True,
    },
    "cpu": {
        "channels_last": True,
        "frozen_old_model": False,
        "valid_taps": True,
        "fused_sgd": True,
        "compile": False,
        "reuse_heap": True,
    },
    "cuda": {
        "channels_last": True,
        "frozen_old_model": True,
        "valid_taps": True,
        "fused_sgd": True,
        "compile": True,
        "reuse_heap": False,
    },
}


def fast_path_plan(device: torch.device | str) -> dict[str, bool]:
    """The ``run.*`` switch values ``--fast`` should use on this device (keys: channels_last, frozen_old_model,
    valid_taps, fused_sgd, compile, reuse_heap); amp is ``resolve_amp('auto', device)``."""
    return dict(FAST_PATH_PLANS[hardware_kind(device)])


def fast_path_overrides(device: torch.device | str) -> dict[str, object]:
    """The ``run.*`` overrides ``--fast`` should apply on ``device``: ``run.amp: auto`` plus ``fast_path_plan``."""
    return {"run.amp": "auto", **{f"run.{k}": v for k, v in fast_path_plan(device).items()}}
