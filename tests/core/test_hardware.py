"""run.amp: auto per capability (faked), the once-per-process bf16 warning, and the real capability query."""

import warnings

import pytest
import torch

from wilson_ray import hardware
from wilson_ray.errors import UserError

AVX2 = hardware.CpuCapability(model="AMD EPYC", isa="AVX2", native_bf16=False, amx=False)
AMX = hardware.CpuCapability(
    model="Intel(R) Xeon(R) Processor", isa="AVX512", native_bf16=True, amx=True, avx512_bf16=True
)


@pytest.fixture
def fake(monkeypatch):
    """Fake the CPU capability and the CUDA bf16 query; reset the once-per-process warning registry."""
    monkeypatch.setattr(hardware, "_warned", set())

    def set_(cpu=AVX2, cuda_bf16=True):
        monkeypatch.setattr(hardware, "cpu_capability", lambda: cpu)
        monkeypatch.setattr(hardware, "cuda_bf16_supported", lambda device: cuda_bf16)
        monkeypatch.setattr(hardware, "cuda_name", lambda device: "NVIDIA FakeGPU")

    return set_


def test_auto_cpu_with_native_bf16_is_bf16(fake):
    fake(cpu=AMX)
    assert hardware.resolve_amp("auto", torch.device("cpu")) == "bf16"
    assert hardware.hardware_kind("cpu") == "cpu_bf16"


def test_auto_cpu_without_native_bf16_is_fp32(fake):
    fake(cpu=AVX2)
    assert hardware.resolve_amp("auto", torch.device("cpu")) == "none"
    assert hardware.hardware_kind("cpu") == "cpu"


def test_auto_cuda_with_bf16_is_bf16(fake):
    fake(cpu=AVX2, cuda_bf16=True)
    assert hardware.resolve_amp("auto", torch.device("cuda:0")) == "bf16"
    assert hardware.hardware_kind("cuda:0") == "cuda"


def test_auto_cuda_without_bf16_is_fp16(fake):
    fake(cpu=AMX, cuda_bf16=False)
    assert hardware.resolve_amp("auto", torch.device("cuda")) == "fp16"


def test_explicit_bf16_on_cpu_without_native_bf16_warns_once_and_is_kept(fake):
    fake(cpu=AVX2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once-only must come from resolve_amp, not Python's filter
        first = hardware.resolve_amp("bf16", "cpu")
        second = hardware.resolve_amp("bf16", "cpu")
    assert (first, second) == ("bf16", "bf16")
    ours = [w for w in caught if issubclass(w.category, hardware.HardwareWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "\n" not in msg and "17x slower" in msg and "AMD EPYC" in msg and "AVX2" in msg


def test_explicit_bf16_on_cpu_with_native_bf16_does_not_warn(fake):
    fake(cpu=AMX)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hardware.resolve_amp("bf16", "cpu") == "bf16"
    assert not [w for w in caught if issubclass(w.category, hardware.HardwareWarning)]


def test_explicit_choices_kept_and_bad_ones_refused(fake):
    fake(cpu=AVX2, cuda_bf16=False)
    assert hardware.resolve_amp("none", "cpu") == "none"
    assert hardware.resolve_amp("bf16", "cuda") == "bf16"  # explicit wins on a GPU too
    assert hardware.resolve_amp("fp16", "cuda") == "fp16"
    with pytest.raises(UserError, match="run.amp: fp16 needs a CUDA device"):
        hardware.resolve_amp("fp16", "cpu")
    with pytest.raises(UserError, match=r"run.amp: 'fp8' is not an amp mode, expected one of auto"):
        hardware.resolve_amp("fp8", "cpu")


def test_describe_amp_choice_names_the_hardware(fake):
    fake(cpu=AVX2, cuda_bf16=True)
    assert (
        hardware.describe_amp_choice("auto", "none", "cpu") == "amp: auto -> none (CPU AMD EPYC, AVX2, no native bf16)"
    )
    assert hardware.describe_amp_choice("bf16", "bf16", "cuda") == "amp: bf16 (CUDA NVIDIA FakeGPU, bf16)"
    fake(cpu=AMX)
    assert hardware.describe_amp_choice("auto", "bf16", "cpu") == (
        "amp: auto -> bf16 (CPU Intel(R) Xeon(R) Processor, AVX512, AMX, native bf16)"
    )


def test_fast_path_plan_per_kind(fake):
    keys = {"channels_last", "frozen_old_model", "valid_taps", "fused_sgd", "compile", "reuse_heap"}
    for cpu, kind in ((AVX2, "cpu"), (AMX, "cpu_bf16")):
        fake(cpu=cpu)
        plan = hardware.fast_path_plan("cpu")
        assert set(plan) == keys and plan == hardware.FAST_PATH_PLANS[kind]
        plan["valid_taps"] = not plan["valid_taps"]  # a copy: callers cannot change the table
        assert hardware.fast_path_plan("cpu") == hardware.FAST_PATH_PLANS[kind]
    assert set(hardware.fast_path_plan("cuda")) == keys
    fake(cpu=AVX2)
    assert hardware.fast_path_overrides("cpu") == {
        "run.amp": "auto",
        **{f"run.{k}": v for k, v in hardware.FAST_PATH_PLANS["cpu"].items()},
    }
    # measured on AVX2 (BENCHMARKS.md §1A): the frozen old model raised peak RSS, the others were wins
    assert hardware.FAST_PATH_PLANS["cpu"] == {
        "channels_last": True,
        "frozen_old_model": False,
        "valid_taps": True,
        "fused_sgd": True,
        "compile": False,
        "reuse_heap": True,
    }
    # the heap is the host's: on CUDA the iteration's tensors are in the caching allocator
    assert not hardware.FAST_PATH_PLANS["cuda"]["reuse_heap"] and hardware.FAST_PATH_PLANS["cpu_bf16"]["reuse_heap"]
    # measured on the H200 (BENCHMARKS.md §1): compile 2.15x at batch 24, parity at batch 2; too slow to compile on CPU
    assert hardware.FAST_PATH_PLANS["cuda"]["compile"] and not hardware.FAST_PATH_PLANS["cpu_bf16"]["compile"]


def test_warning_prints_one_line(fake):
    """As Python prints it on stderr: one line, no source line of the caller under it."""
    fake(cpu=AVX2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hardware.resolve_amp("bf16", "cpu")
    w = caught[0]
    text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
    assert text.count("\n") == 1 and "HardwareWarning: run.amp: bf16 on a CPU without native bf16" in text


def test_real_capability_query_agrees_with_torch():
    hardware.cpu_capability.cache_clear()
    cap = hardware.cpu_capability()
    assert cap.isa == torch.backends.cpu.get_cpu_capability()
    assert cap.native_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cap.model and cap.label().startswith(cap.isa)
    # auto never picks emulated bf16 on this machine's CPU
    assert hardware.resolve_amp("auto", "cpu") == ("bf16" if cap.native_bf16 else "none")


def test_step_benchmark_resolves_auto_and_uses_the_plan(fake):
    """benchmarks.step's fast path is --fast on this hardware: amp auto resolved, switches from fast_path_plan."""
    from benchmarks import step

    fake(cpu=AVX2)
    o = step.options(step.parse_args(["--backbone", "small"]))
    assert (o.amp, o.amp_requested) == ("none", "auto")
    plan = hardware.FAST_PATH_PLANS["cpu"]
    assert {k: getattr(o, k) for k in plan} == plan
    fake(cpu=AMX)
    assert step.options(step.parse_args(["--backbone", "small"])).amp == "bf16"
    # explicit flags win; fp32 eager is all off
    o = step.options(step.parse_args(["--fp32-eager", "--channels-last"]))
    assert (o.amp, o.channels_last, o.valid_taps, o.frozen_old_model, o.fused_sgd, o.reuse_heap) == (
        "none",
        True,
        False,
        False,
        False,
        False,
    )


def test_fast_flag_takes_the_plan_of_the_hardware(fake, capsys):
    """`wilson-ray train --fast` on an AVX2 CPU: amp auto -> fp32, and the switches of the AVX2 plan; on an AMX CPU
    every switch; an explicit --set still wins over the plan."""
    from wilson_ray.cli import build_parser
    from wilson_ray.commands.train import config_from_args

    parser = build_parser()
    fake(cpu=AVX2)
    cfg = config_from_args(parser.parse_args(["train", "--preset", "demo", "--fast", "--device", "cpu"]))
    plan = hardware.FAST_PATH_PLANS["cpu"]
    assert cfg.run.amp == "auto" and hardware.resolve_amp(cfg.run.amp, torch.device("cpu")) == "none"
    assert {k: getattr(cfg.run, k) for k in plan} == plan
    fake(cpu=AMX)
    cfg = config_from_args(parser.parse_args(["train", "--preset", "demo", "--fast", "--device", "cpu"]))
    assert {k: getattr(cfg.run, k) for k in plan} == hardware.FAST_PATH_PLANS["cpu_bf16"]
    cfg = config_from_args(
        parser.parse_args(
            ["train", "--preset", "demo", "--fast", "--device", "cpu", "--set", "run.channels_last=false"]
        )
    )
    assert cfg.run.channels_last is False
