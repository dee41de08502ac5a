#!/bin/bash
# issue 16 device checks: GPU (resolve_amp -> bf16, fast vs fp32 eager) and the host CPU at 2 threads,
# natively and with oneDNN/ATen limited to AVX2 (a quiet stand-in for an AVX2 CPU); jobs pinned to distinct cores.
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
P=python3
lscpu | grep -E "Model name|Flags" | cut -c1-400 > $OUT/lscpu.txt
nvidia-smi --query-gpu=name,memory.total --format=csv >> $OUT/lscpu.txt 2>&1
$P - >> $OUT/lscpu.txt 2>&1 <<'PY'
import torch; from wilson_ray import hardware as h
print(torch.__version__, h.cpu_capability())
for d in ("cpu", "cuda"):
    print(h.describe_amp_choice("auto", h.resolve_amp("auto", d), d), h.fast_path_plan(d))
a = torch.randn(4096, 4096); b = torch.randn(4096, 4096); torch.set_num_threads(2)
import time
for dt in (torch.float32, torch.bfloat16):
    x, y = a.to(dt), b.to(dt); x @ y; t = time.perf_counter(); [x @ y for _ in range(3)]; s = (time.perf_counter() - t) / 3
    print("cpu 2-thread matmul", dt, round(2 * 4096**3 / s / 1e12, 3), "TFLOP/s")
PY
R="$P -m benchmarks.step --backbone resnet101 --method wilson --no-flops --json"
AVX2="env ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
j() { c=$1; n=$2; shift 2; taskset -c $c "$@" > $OUT/$n.json 2> $OUT/$n.err & }
j 0-1   gpu         bash -c "$P -m benchmarks.step --device cuda --backbone resnet101 --method wilson --json --size 512 --batch 2 --step 1 --paired --iters 10 --warmup 3; $P -m benchmarks.step --device cuda --backbone resnet101 --method wilson --json --size 512 --batch 12 --step 1 --paired --iters 10 --warmup 3; $P -m benchmarks.step --device cuda --backbone resnet101 --method wilson --json --size 512 --batch 12 --step 1 --iters 10 --warmup 3"
j 2-3   nat256fast  $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4
j 4-5   avx256fast  $AVX2 $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4
j 6-7   avx256cl    $AVX2 $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4 --fp32-eager --channels-last
j 8-9   avx256vt    $AVX2 $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4 --fp32-eager --valid-taps
j 10-11 avx256fom   $AVX2 $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4 --fp32-eager --frozen-old-model
j 12-13 avx256fsgd  $AVX2 $R --size 256 --batch 4 --step 1 --paired --warmup 1 --iters 4 --fp32-eager --fused-sgd
j 14-15 avx512fast  $AVX2 $R --size 512 --batch 2 --step 1 --paired --warmup 1 --iters 3
wait
