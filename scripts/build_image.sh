#!/usr/bin/env bash
# Build docker/Dockerfile.cpu on a machine that cannot pull base images, then run it (as its non-root user):
# `wilson-ray --help` and a tiny synthetic training run. Reproducible: the same steps every time.
#
#   scripts/build_image.sh                 # everything below; needs root, docker.io, debootstrap
#   BASE=python:3.11-slim-bookworm scripts/build_image.sh    # a pullable base instead of the local Debian
#
# 1. dockerd: used if running, else started here (no bridge, no iptables: builds and runs use the host's network
#    namespace or none, so no private addresses appear) and stopped at the end (KEEP_DOCKERD=1 keeps it).
# 2. the base: `debootstrap --variant=minbase bookworm` + `docker import` -> wilson-ray-base:bookworm (once).
# 3. the pinned wheels: `pip download` here (this machine's pip configuration: local mirrors, the registry's CA),
#    served read-only on 127.0.0.1; the build installs from them with --no-index.
# 4. docker build --network host --build-arg BASE=... -> wilson-ray:cpu; then the checks, with --network none.
# Environment: IMAGE (default wilson-ray:cpu), BASE, DEBIAN_MIRROR, WHEELS (1; 0 = let the build reach PyPI and
# TORCH_INDEX_URL itself), DOCKER_DATA_ROOT (dockerd's --data-root when started here).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-wilson-ray:cpu}"
LOCAL_BASE=wilson-ray-base:bookworm
BASE="${BASE:-$LOCAL_BASE}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="$(mktemp -d /tmp/wr-image-XXXXXX)"
PIDS=()
STARTED_DOCKERD=""

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n "$STARTED_DOCKERD" && "${KEEP_DOCKERD:-0}" != "1" ]]; then
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "build_image: $*" >&2; }

# 1. the daemon
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log $WORK/dockerd.log)"
  dockerd --bridge=none --iptables=false --ip-masq=false ${DOCKER_DATA_ROOT:+--data-root "$DOCKER_DATA_ROOT"} \
    >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not start:"; tail -20 "$WORK/dockerd.log" >&2; exit 1
  fi
fi

# 2. the base image
if [[ "$BASE" == "$LOCAL_BASE" ]] && ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
  say "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  say "base image $LOCAL_BASE: $(docker image inspect -f '{{.Size}}' "$LOCAL_BASE" | numfmt --to=iec)"
fi

# 3. the wheels: downloaded here with this machine's pip configuration (its local mirrors, its CA bundle for the
#    registry), for this Python and platform, then served read-only on 127.0.0.1: the build installs with
#    --no-index from them (no TLS or mirror setup inside the image). WHEELS=0 skips this: the build then uses
#    PyPI and TORCH_INDEX_URL as the Dockerfile says (a machine that reaches them).
PIP_ARGS=()
if [[ "${WHEELS:-1}" == "1" ]]; then
  say "pip download of the pinned set into $WORK/wheels"
  python3 -m pip download -q -d "$WORK/wheels" -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" \
    ".[postgres]" "setuptools>=68" wheel pip >"$WORK/pip-download.log" 2>&1 \
    || { tail -20 "$WORK/pip-download.log" >&2; exit 1; }
  rm -f "$WORK/wheels"/wilson_ray-*   # the package itself is built from the copied source
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  python3 -m http.server --bind 127.0.0.1 --directory "$WORK/wheels" "$port" >/dev/null 2>&1 &
  PIDS+=($!)
  sleep 1
  PIP_ARGS=(--no-index --find-links "http://127.0.0.1:$port/" --trusted-host 127.0.0.1)
  TORCH_INDEX_URL=""
  say "$(ls "$WORK/wheels" | wc -l) files, $(du -sh "$WORK/wheels" | cut -f1), served on 127.0.0.1:$port"
fi

# 4. build and check
say "docker build -f docker/Dockerfile.cpu --build-arg BASE=$BASE -t $IMAGE"
t0=$(date +%s)
docker build --network host -f docker/Dockerfile.cpu -t "$IMAGE" --build-arg "BASE=$BASE" \
  --build-arg "PIP_ARGS=${PIP_ARGS[*]}" ${TORCH_INDEX_URL+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"} .
# (the build's RUN steps reach 127.0.0.1 through --network host; `docker run` below uses --network none)
say "built $IMAGE in $(( $(date +%s) - t0 )) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec)"

run() { docker run --rm --network none --shm-size 512m "$IMAGE" "$@"; }
[[ "$(run id -u)" == "1000" ]] || { say "the image does not run as uid 1000"; exit 1; }
run wilson-ray --help | head -3
run bash -c 'set -e; cd /tmp
  wilson-ray data synth --out /tmp/synth --train 24 --val 6 --size 64 >/dev/null
  wilson-ray train --preset demo --data-root /tmp/synth --task 15-5 --steps 0 --cache-dir /tmp/cache \
    --set step0.epochs=1 --set step0.max_iters_per_epoch=2 --set data.batch_size=4 --set data.num_workers=0 \
    --out /tmp/out
  ls /tmp/out'
say "ok: $IMAGE runs wilson-ray --help and a synthetic training step as uid 1000"
