#!/usr/bin/env bash
# The one-command demo: synthetic data -> step 0 (once, on a 2-worker Ray Train TorchTrainer, cached) -> an
# Optuna + ASHA sweep of WILSON step 1 (8 single-worker trials, 2 at a time) -> MLflow + Optuna storage -> the
# seed confirmation (the 2 best trials and the paper default again with 3 fresh seeds each: mean ± std, 95 %
# intervals, Welch's t-test), the summary, the HTML report and the commands that open
# the MLflow UI and optuna-dashboard.
#
#   scripts/demo.sh [extra `wilson-ray sweep` flags]
#
# Environment: DATA (default data/synthetic), STORAGE (default runs/sweeps), TRIALS (default 8).
# Re-running it resumes the sweep (or, when it finished, prints its results again).
set -euo pipefail

DATA="${DATA:-data/synthetic}"
STORAGE="${STORAGE:-runs/sweeps}"
TRIALS="${TRIALS:-8}"

if [[ ! -f "$DATA/splits/val.txt" ]]; then
  wilson-ray data synth --out "$DATA"
fi
exec wilson-ray sweep --space search_spaces/demo-short.yaml --data-root "$DATA" --storage "$STORAGE" \
  --num-samples "$TRIALS" "$@"
