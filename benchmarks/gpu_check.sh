#!/usr/bin/env bash
# The GPU checks of BENCHMARKS.md, in one run on a CUDA machine whose Python already has torch, torchvision,
# pyarrow, pyyaml, tqdm and pillow (no install; the package is used from the checkout):
#   bash benchmarks/gpu_check.sh OUT_DIR [OLD_TREE]
# 1. what `run.amp: auto` and `--fast` choose on this device;
# 2. ResNet-101 step 1 (WILSON) at 2x512² and 24x512²: fp32 eager vs the configured fast path, paired;
#    with COMPILE=1 also the fast path + torch.compile (run.compile) at both batches, paired the same way;
# 3. with OLD_TREE (a checkout of an earlier commit): the synthetic table of both trees on this device, side by
#    side (same data, same seeds), to show what a change moved.
set -uo pipefail
OUT="${1:?output folder}"; OLD="${2:-}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import torch
from wilson_ray import hardware
d = torch.device("cuda")
amp = hardware.resolve_amp("auto", d)
print("torch", torch.__version__, "|", hardware.describe_amp_choice("auto", amp, d), "| --fast plan:", hardware.fast_path_plan(d))
PY
if [[ -n "$OLD" ]]; then
  python3 -m wilson_ray data synth --out /tmp/synth >/dev/null
  (cd "$OLD" && PYTHONPATH="$PWD" python3 -m wilson_ray table --preset demo --data-root /tmp/synth --out /tmp/t-old \
      --cache-dir /tmp/c-old > "$OUT/table_old.log" 2>&1) &
  python3 -m wilson_ray table --preset demo --data-root /tmp/synth --out /tmp/t-new --cache-dir /tmp/c-new \
      > "$OUT/table_new.log" 2>&1 &
fi
for b in 2 24; do
  python3 -m benchmarks.step --backbone resnet101 --size 512 --batch $b --step 1 --method wilson --device cuda \
    --threads 0 --paired --iters 10 --json > "$OUT/step_r101_512_b$b.json" 2> "$OUT/step_r101_512_b$b.err"
  tail -c 1500 "$OUT/step_r101_512_b$b.json"; tail -3 "$OUT/step_r101_512_b$b.err"
done
if [[ "${COMPILE:-0}" == 1 ]]; then
  for b in 24 2; do
    python3 -m benchmarks.step --backbone resnet101 --size 512 --batch $b --step 1 --method wilson --device cuda \
      --threads 0 --paired --iters 10 --compile --json > "$OUT/step_r101_512_b${b}_compile.json" \
      2> "$OUT/step_r101_512_b${b}_compile.err"
    tail -c 1500 "$OUT/step_r101_512_b${b}_compile.json"; tail -3 "$OUT/step_r101_512_b${b}_compile.err"
  done
fi
wait
[[ -n "$OLD" ]] && { cp /tmp/t-old/table.md "$OUT/table_old.md"; cp /tmp/t-new/table.md "$OUT/table_new.md"; \
  cat "$OUT"/table_*.md; }
exit 0
