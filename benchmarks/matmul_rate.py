"""The dense matrix-multiply rate this device actually reaches, the denominator of the step's MFU figure.

    python -m benchmarks.matmul_rate --device cuda --dtype bf16 --json
    python -m benchmarks.matmul_rate --device cpu --dtype bf16 --size 2048 --threads 2 --json

A datasheet peak (989 TFLOP/s dense bf16 on an H100/H200) is not what a given card, clock and driver deliver, so
``benchmarks/gpu_check.sh`` measures ``torch.matmul`` of two square ``--size`` matrices in ``--dtype``
(2·n³ FLOP per product), takes the best of ``--repeats`` timed batches of ``--iters`` products after a warm-up, and
passes that rate to ``benchmarks.step --peak-tflops``: MFU = the step's FLOP/s (``FlopCounterMode``) / this rate.
On a CPU the same figure says how far a CPU step is from what its matrix units (AMX, AVX-512 BF16, FMA) give.

Output: one JSON object (``--json``) with ``tflops`` (best), every batch's rate, and the device, dtype and size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks import common

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.matmul_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--size", type=int, default=None, help="matrix side n (default: 8192 on CUDA, 2048 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="products per timed batch (default: 50 CUDA, 5 CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches; the best one is the rate")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    for name in ("size", "iters", "repeats"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    return a


def measure(device: torch.device, dtype: torch.dtype, n: int, iters: int, repeats: int) -> list[float]:
    """TFLOP/s of each of ``repeats`` batches of ``iters`` n×n matmuls (2·n³ FLOP each), after one warm-up batch."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def batch() -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        sync()
        return time.perf_counter() - t0

    batch()  # warm-up: kernel selection, clocks, oneDNN primitive cache
    flop = 2.0 * n**3 * iters
    return [flop / batch() / 1e12 for _ in range(repeats)]


def main(argv=None) -> dict:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"matmul_rate: --device {a.device}: torch.cuda.is_available() is False on this machine")
    if device.type == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    n = a.size or (8192 if device.type == "cuda" else 2048)
    iters = a.iters or (50 if device.type == "cuda" else 5)
    rates = measure(device, DTYPES[a.dtype], n, iters, a.repeats)
    out = {
        "benchmark": "matmul_rate",
        "tflops": round(max(rates), 3),
        "rates_tflops": [round(r, 3) for r in rates],
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else common.cpu_model(),
        "cpu_flags": common.cpu_flags(),
        "dtype": a.dtype,
        "size": n,
        "iters": iters,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.dtype} matmul {n}² on {out['device_name']}: {out['tflops']:.3f} TFLOP/s (best of {a.repeats})")
    return out


if __name__ == "__main__":
    main()
