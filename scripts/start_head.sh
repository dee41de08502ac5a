#!/usr/bin/env bash
# Start a Ray head node for wilson-ray sweeps on this machine.
#
#   scripts/start_head.sh                 # all cores, dashboard + job server on http://127.0.0.1:8265
#   NUM_CPUS=4 scripts/start_head.sh      # more logical CPUs than cores (e.g. to overlap trial start-up)
#
# Settings that matter here (docs/stack.md):
# * the dashboard must run (ray[default]): without it a trial stopped by ASHA can leak its placement group and
#   the next trial waits forever; it also hosts the job server that `ray job submit` talks to;
# * it binds 127.0.0.1 unless DASHBOARD_HOST says otherwise;
# * since Ray 2.59 a local cluster uses token authentication: the token is written to ~/.ray/auth_token and the
#   CLI (`ray job submit`, `ray status`) needs RAY_AUTH_MODE=token exported (scripts/submit_sweep.sh does it).
#   RAY_AUTH_MODE=disabled scripts/start_head.sh starts the head without authentication instead.
set -euo pipefail

NUM_CPUS="${NUM_CPUS:-$(nproc)}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"

if [[ "${RAY_AUTH_MODE:-token}" == "disabled" ]]; then
  export RAY_AUTH_MODE=disabled
  echo "start_head: token authentication disabled (RAY_AUTH_MODE=disabled)" >&2
else
  export RAY_AUTH_MODE=token
fi

ray start --head \
  --port "${RAY_PORT}" \
  --num-cpus "${NUM_CPUS}" \
  --include-dashboard true \
  --dashboard-host "${DASHBOARD_HOST}" \
  --dashboard-port "${DASHBOARD_PORT}" \
  --disable-usage-stats \
  "$@"

cat <<MSG

Ray head is up: dashboard and job server at http://${DASHBOARD_HOST}:${DASHBOARD_PORT}
  submit a sweep:  scripts/submit_sweep.sh --space search_spaces/demo.yaml --data-root \$PWD/data/synthetic
  MLflow UI:       scripts/mlflow_server.sh
  stop:            scripts/stop.sh
MSG
