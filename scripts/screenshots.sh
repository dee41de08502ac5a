#!/usr/bin/env bash
# Screenshots (headless Chromium) of a sweep, as in the README: the MLflow experiment page (the shared view with the
# trials' columns that the sweep stores), one trial run, the HTML report, and optuna-dashboard's trials page.
#   scripts/screenshots.sh STORAGE NAME OUTDIR     e.g. scripts/screenshots.sh runs/sweeps demo-wilson-15-5 docs/img
# Needs chromium; optuna-dashboard's page only where it is installed; servers bind 127.0.0.1 and stop at the end.
set -u
ST=$(realpath "$1"); NAME=$2; OUT=$(realpath -m "$3"); mkdir -p "$OUT"
B=$(realpath "${VENV:-.venv}/bin"); LOGS=$(mktemp -d)
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# MLflow 3.17's assistant panel opens by itself on a first visit from "localhost"/"127.0.0.1" and covers a third of
# the page; the browser reaches the same 127.0.0.1 server under another name (host-resolver rule, allowed host) so
# the pictures show the runs. ?workflowType=machine_learning opens the "Model training" side of the UI.
HOSTNAME_=mlflow.screenshot
setsid "$B/mlflow" server --backend-store-uri "sqlite:///$ST/mlflow.db" --host 127.0.0.1 --port 5077 --workers 1 \
  --allowed-hosts "$HOSTNAME_:5077,127.0.0.1:5077" --cors-allowed-origins "http://$HOSTNAME_:5077" >"$LOGS/mlflow.log" 2>&1 &
MP=$!
OP=$MP
if [[ -x "$B/optuna-dashboard" ]]; then
  setsid "$B/optuna-dashboard" "sqlite:///$ST/$NAME/optuna.db" --host 127.0.0.1 --port 8077 >"$LOGS/optuna.log" 2>&1 &
  OP=$!
fi
trap 'kill -- -$MP -$OP 2>/dev/null; sleep 1; kill -9 -- -$MP -$OP 2>/dev/null' EXIT  # their process groups
for _ in $(seq 180); do curl -fsS http://127.0.0.1:5077/health >/dev/null 2>&1 && break; sleep 1; done
read -r EXP RUN STOPPED < <("$B/python" - "$ST" "$NAME" <<'PY'
import sys
from mlflow.tracking import MlflowClient
c = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
e = c.get_experiment_by_name(sys.argv[2])
runs = c.search_runs([e.experiment_id], order_by=["metrics.`miou/hm` DESC"])
trial = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
stopped = [r for r in trial if r.info.status == "KILLED"]
print(e.experiment_id, trial[0].info.run_id if trial else "", stopped[0].info.run_id if stopped else "")
PY
)
C=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 --virtual-time-budget=30000)
M=(--host-resolver-rules="MAP $HOSTNAME_ 127.0.0.1")
"${C[@]}" "${M[@]}" --screenshot="$OUT/mlflow_experiment.png" \
  "http://$HOSTNAME_:5077/#/experiments/$EXP/runs?viewStateShareKey=wilson-ray&workflowType=machine_learning" 2>/dev/null
"${C[@]}" "${M[@]}" --screenshot="$OUT/mlflow_trial.png" \
  "http://$HOSTNAME_:5077/#/experiments/$EXP/runs/$RUN?workflowType=machine_learning" 2>/dev/null
"${C[@]}" "${M[@]}" --window-size=1600,1300 --screenshot="$OUT/mlflow_trial_metrics.png" \
  "http://$HOSTNAME_:5077/#/experiments/$EXP/runs/$RUN/model-metrics?workflowType=machine_learning" 2>/dev/null
[[ -n "$STOPPED" ]] && "${C[@]}" "${M[@]}" --screenshot="$OUT/mlflow_stopped_trial.png" \
  "http://$HOSTNAME_:5077/#/experiments/$EXP/runs/$STOPPED?workflowType=machine_learning" 2>/dev/null
[[ -f "$ST/$NAME/report/report.html" ]] && chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1300,2600 --screenshot="$OUT/report.png" "file://$ST/$NAME/report/report.html" 2>/dev/null
if [[ $OP != "$MP" ]]; then
  for _ in $(seq 60); do curl -fsS http://127.0.0.1:8077/ >/dev/null 2>&1 && break; sleep 1; done
  "${C[@]}" --screenshot="$OUT/optuna_trials.png" "http://127.0.0.1:8077/dashboard/studies/1/trials" 2>/dev/null
fi
ls -la "$OUT"
