#!/usr/bin/env bash
# Serve the MLflow UI / tracking server on the sweeps' store (127.0.0.1 unless MLFLOW_HOST says otherwise).
#
#   scripts/mlflow_server.sh [STORAGE]     # default STORAGE: runs/sweeps (the `wilson-ray sweep` default)
#
# Sweeps write to sqlite:///STORAGE/mlflow.db by default; run them with --tracking-uri http://127.0.0.1:5000 to
# log through this server instead. For a cluster (several nodes log to it) put the store in PostgreSQL:
#   PGPASSWORD=... BACKEND_STORE_URI=postgresql://wilson@db-host:5432/mlflow MLFLOW_HOST=head-ip scripts/mlflow_server.sh /shared
# (the password from PGPASSWORD or ~/.pgpass; artifacts go to STORAGE/mlartifacts, served by this server).
# Runs in the foreground unless DETACH=1 (then its pid goes to
# STORAGE/mlflow_server.pid and scripts/stop.sh stops it).
set -euo pipefail

STORAGE="$(realpath -m -- "${1:-runs/sweeps}")"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
mkdir -p "$STORAGE/mlartifacts"

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # lighter: no job runner (docs/stack.md)
cmd=(mlflow server
  --backend-store-uri "${BACKEND_STORE_URI:-sqlite:///$STORAGE/mlflow.db}"
  --artifacts-destination "$STORAGE/mlartifacts"
  --host "$HOST" --port "$PORT" --workers 1
  # Host headers the server answers (DNS-rebinding guard; MLflow's default is localhost and private ranges):
  # clients on other machines use $HOST:$PORT; with MLFLOW_HOST=0.0.0.0 name the address they use
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-$HOST,$HOST:$PORT,localhost,localhost:$PORT,127.0.0.1,127.0.0.1:$PORT}")

if [[ "${DETACH:-0}" == "1" ]]; then
  nohup "${cmd[@]}" >"$STORAGE/mlflow_server.log" 2>&1 &
  echo $! >"$STORAGE/mlflow_server.pid"
  for _ in $(seq 60); do
    if curl -fsS "http://$HOST:$PORT/health" >/dev/null 2>&1; then
      echo "MLflow at http://$HOST:$PORT (pid $(cat "$STORAGE/mlflow_server.pid"), log $STORAGE/mlflow_server.log)"
      exit 0
    fi
    sleep 1
  done
  echo "mlflow_server: not healthy after 60 s, see $STORAGE/mlflow_server.log" >&2
  exit 1
fi
store="$STORAGE/mlflow.db"
[[ -n "${BACKEND_STORE_URI:-}" ]] && store="${BACKEND_STORE_URI%%://*} database"   # no password in the log
echo "MLflow at http://$HOST:$PORT (store $store)"
exec "${cmd[@]}"
