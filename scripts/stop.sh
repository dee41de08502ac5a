#!/usr/bin/env bash
# Stop what scripts/start_head.sh and scripts/mlflow_server.sh (DETACH=1) started on this machine.
#
#   scripts/stop.sh [STORAGE]     # default STORAGE: runs/sweeps (where mlflow_server.sh left its pid file)
set -euo pipefail

STORAGE="$(realpath -m -- "${1:-runs/sweeps}")"
pidfile="$STORAGE/mlflow_server.pid"
if [[ -f "$pidfile" ]]; then
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" && echo "stopped MLflow server (pid $pid)"
  fi
  rm -f "$pidfile"
fi
# The Ray node(s) of this machine, jobs and workers included. --force for anything that ignores SIGTERM.
ray stop || ray stop --force
