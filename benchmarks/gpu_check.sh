#!/usr/bin/env bash
# The GPU checks of BENCHMARKS.md in one prepared run, on a CUDA machine whose Python already has torch,
# torchvision and the package's dependencies (the package is used from the checkout, PYTHONPATH=.):
#   bash benchmarks/gpu_check.sh OUT_DIR                         # every part, ~10-14 min on one H200
#   PARTS="info matmul step" bash benchmarks/gpu_check.sh OUT    # or split over two calls: ... then PARTS=sweep
# Parts (PARTS, in this order):
#   info    the GPU, torch, what `run.amp: auto` and `--fast` choose here             -> OUT/device.txt
#   matmul  the measured dense bf16 matmul rate (benchmarks.matmul_rate), MFU's denominator -> OUT/matmul.json
#   step    ResNet-101 WILSON step 1 and step-0 iterations at BATCHES x SIZE² on the fast path (bf16), MFU against
#           the measured rate, peak GPU memory; torch.compile on (the CUDA plan) and off at COMPILE_BATCH; one
#           paired run against fp32 eager                                             -> OUT/step_*.json
#   sweep   a 2-trial sweep of benchmarks/spaces/gpu2.yaml with --gpus-per-worker 1, once with --trainer direct
#           and once as 1-worker Ray Train TorchTrainers (whose worker log says which process group it got:
#           nccl on a GPU)                                                            -> OUT/sweep_*.json
#   table   with OLD_TREE=<checkout of an earlier commit>: the synthetic table of both trees on this device
# Finally OUT/summary.md: one line per step run (time, images/s, TFLOP/s, MFU, GPU memory) and the sweeps.
# DEVICE=cpu runs the same parts at toy sizes on the CPU (small backbone, 64², gloo): what the tests run, so the
# script cannot drift from the benchmarks' and the sweep's command lines between GPU sessions.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
DEVICE="${DEVICE:-cuda}"
PARTS="${PARTS:-info matmul step sweep table}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK="${WORK:-$(mktemp -d -t gpu-check.XXXXXX)}"
if [[ "$DEVICE" == cpu ]]; then
  BACKBONE=small SIZE="${SIZE:-64}" BATCHES="${BATCHES:-2}" COMPILE_BATCH="${COMPILE_BATCH:-2}" ITERS=1 WARMUP=1
  MM_SIZE=256 GPUS=0 THREADS=1 STEP_SETS="--set incremental.max_iters_per_epoch=2 --set step0.epochs=1"
  SYNTH_ARGS="--train 60 --val 12 --size 64"
else
  BACKBONE=resnet101 SIZE="${SIZE:-512}" BATCHES="${BATCHES:-8 16 24}" COMPILE_BATCH="${COMPILE_BATCH:-24}"
  ITERS="${ITERS:-10}" WARMUP="${WARMUP:-3}" MM_SIZE=8192 GPUS=1 THREADS=0 STEP_SETS="" SYNTH_ARGS=""
fi
has() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
status=0
note() { echo "gpu_check: $*" | tee -a "$OUT/log.txt"; }

if has info; then
  { [[ "$DEVICE" != cpu ]] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    DEVICE="$DEVICE" "$PY" - <<'PY'
import os, torch
from wilson_ray import hardware
d = torch.device(os.environ["DEVICE"])
amp = hardware.resolve_amp("auto", d)
print("torch", torch.__version__, "|", hardware.describe_amp_choice("auto", amp, d), "| --fast plan:",
      hardware.fast_path_plan(d))
PY
  } > "$OUT/device.txt" 2>&1 || status=1
  cat "$OUT/device.txt"
fi

PEAK=""
if has matmul || has step; then
  if "$PY" -m benchmarks.matmul_rate --device "$DEVICE" --dtype bf16 --size "$MM_SIZE" --threads "$THREADS" --json \
      > "$OUT/matmul.json" 2> "$OUT/matmul.err"; then
    PEAK=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tflops"])' "$OUT/matmul.json")
    note "measured bf16 matmul rate: $PEAK TFLOP/s (MFU denominator)"
  else
    note "matmul_rate failed: $(tail -1 "$OUT/matmul.err")"; status=1
  fi
fi

step_run() {  # NAME ARGS...: one benchmarks.step process (fresh: its own peak memory), JSON into OUT/NAME.json
  local name="$1"; shift
  if "$PY" -m benchmarks.step --backbone "$BACKBONE" --size "$SIZE" --method wilson --device "$DEVICE" \
      --threads "$THREADS" --iters "$ITERS" --warmup "$WARMUP" ${PEAK:+--peak-tflops "$PEAK"} --json "$@" \
      > "$OUT/$name.json" 2> "$OUT/$name.err"; then
    note "$name: $("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%s s/iter, mfu %s" % (r.get("median_s"), r.get("mfu")))' "$OUT/$name.json")"
  else
    note "$name failed: $(tail -1 "$OUT/$name.err")"; rm -f "$OUT/$name.json"; status=1
  fi
}
if has step; then
  for b in $BATCHES; do
    step_run "step_s1_b${b}" --step 1 --batch "$b"
  done
  step_run "step_s0_b${COMPILE_BATCH}" --step 0 --batch "$COMPILE_BATCH"
  # The CUDA plan compiles; on the CPU plan compile is off, so "on" there is explicit.
  # inductor's CPU compile of even the toy model takes minutes on 2 cores: DEVICE=cpu skips it unless COMPILE_ON=1
  [[ "${COMPILE_ON:-$GPUS}" != 0 ]] && step_run "step_s1_b${COMPILE_BATCH}_compile_on" --step 1 --batch "$COMPILE_BATCH" --compile
  step_run "step_s1_b${COMPILE_BATCH}_compile_off" --step 1 --batch "$COMPILE_BATCH" --no-compile
  step_run "step_s0_b${COMPILE_BATCH}_compile_off" --step 0 --batch "$COMPILE_BATCH" --no-compile
  step_run "step_s1_b${COMPILE_BATCH}_paired_fp32" --step 1 --batch "$COMPILE_BATCH" --paired --no-flops
fi

if has sweep; then
  DATA="$WORK/synthetic"
  [[ -f "$DATA/splits/val.txt" ]] || "$PY" -m wilson_ray data synth --out "$DATA" $SYNTH_ARGS > "$OUT/synth.log" 2>&1
  for trainer in direct torch; do
    name="gpu2-$trainer"
    t0=$SECONDS
    if "$PY" -m wilson_ray sweep --space benchmarks/spaces/gpu2.yaml --data-root "$DATA" --storage "$WORK/sweeps" \
        --name "$name" --trainer "$trainer" --gpus-per-worker "$GPUS" --no-mlflow --quiet $STEP_SETS \
        > "$OUT/sweep_$trainer.log" 2>&1; then
      cp "$WORK/sweeps/$name/summary.json" "$OUT/sweep_$trainer.json"
      note "sweep --trainer $trainer: $((SECONDS - t0)) s"
    else
      note "sweep --trainer $trainer failed: $(tail -1 "$OUT/sweep_$trainer.log")"; status=1
    fi
    if [[ "$trainer" == torch ]]; then
      for log in "$WORK/sweeps/$name"/trials/*/worker-0.log; do  # each trial's first report of its backend
        grep -m1 "process group" "$log"
      done > "$OUT/sweep_torch_backend.txt" 2>/dev/null
      note "TorchTrainer workers: $(sort -u "$OUT/sweep_torch_backend.txt" | tr '\n' ' ')"
    fi
  done
fi

if has table && [[ -n "${OLD_TREE:-}" ]]; then
  DATA="$WORK/synthetic"
  [[ -f "$DATA/splits/val.txt" ]] || "$PY" -m wilson_ray data synth --out "$DATA" $SYNTH_ARGS > "$OUT/synth.log" 2>&1
  (cd "$OLD_TREE" && PYTHONPATH="$PWD" "$PY" -m wilson_ray table --preset demo --data-root "$DATA" \
      --out "$WORK/t-old" --cache-dir "$WORK/c-old" > "$OUT/table_old.log" 2>&1) &
  "$PY" -m wilson_ray table --preset demo --data-root "$DATA" --out "$WORK/t-new" --cache-dir "$WORK/c-new" \
    > "$OUT/table_new.log" 2>&1
  wait
  cp "$WORK/t-old/table.md" "$OUT/table_old.md" && cp "$WORK/t-new/table.md" "$OUT/table_new.md" || status=1
fi

"$PY" -m benchmarks.gpu_check_summary "$OUT" > "$OUT/summary.md" || status=1
cat "$OUT/summary.md"
exit $status
