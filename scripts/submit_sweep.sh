#!/usr/bin/env bash
# Submit `wilson-ray sweep ...` to the Ray cluster's job server (started by scripts/start_head.sh).
#
#   scripts/submit_sweep.sh --space search_spaces/demo.yaml --data-root data/synthetic [sweep flags...]
#
# The repository is uploaded as the job's working directory (files ignored by git, such as data/ and runs/, are
# not), so --data-root and --storage are turned into absolute paths here: the job runs in a temporary copy that
# disappears. A job runs once; submitting the same command again resumes the sweep where it stopped.
# Environment: RAY_JOB_ADDRESS (default http://127.0.0.1:8265), STORAGE (default $PWD/runs/sweeps),
# NO_WAIT=1 to return right after submitting (follow with `ray job logs -f <id>`).
set -euo pipefail

ADDRESS="${RAY_JOB_ADDRESS:-http://127.0.0.1:8265}"
STORAGE="${STORAGE:-$PWD/runs/sweeps}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

args=()
have_storage=0
while (($#)); do
  case "$1" in
    --data-root|--storage)
      [[ $# -ge 2 ]] || { echo "submit_sweep: $1 needs a value" >&2; exit 2; }
      [[ "$1" == "--storage" ]] && have_storage=1
      args+=("$1" "$(realpath -m -- "$2")"); shift 2 ;;
    --data-root=*|--storage=*)
      key="${1%%=*}"; [[ "$key" == "--storage" ]] && have_storage=1
      args+=("$key" "$(realpath -m -- "${1#*=}")"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ $have_storage == 0 ]]; then
  args+=(--storage "$(realpath -m -- "$STORAGE")")
fi

wait_flag=()
[[ "${NO_WAIT:-0}" == "1" ]] && wait_flag=(--no-wait)

exec ray job submit --address "$ADDRESS" --working-dir . "${wait_flag[@]}" -- \
  python -m wilson_ray sweep "${args[@]}"
