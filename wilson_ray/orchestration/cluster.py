"""The Ray cluster a sweep runs on: connect or start one, refuse trials it can never place, pick the trainer."""

from __future__ import annotations

import logging
import os

import ray

from wilson_ray.errors import UserError

# A local cluster's daemons share the trials' cores: leave out what a sweep never uses (benchmarks/ray_idle.py,
# 2 cores: idle daemons 8.9-11.3 -> 6.6-7.5 % of a core; BENCHMARKS.md section 3). The environment wins.
LOCAL_CLUSTER_ENV = {
    "RAY_enable_metrics_collection": "0",  # Prometheus metrics export: no Prometheus here
    "RAY_prestart_worker_first_driver": "0",  # idle workers started for the driver, which runs no tasks
    "RAY_enable_worker_prestart": "0",
}

VERBOSE = True  # the sweep sets it: False keeps workers' output out of the console (``init_ray``)


def init_ray(address: str | None, num_cpus: int | None, verbose: bool | None = None) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS, as under ``ray job submit``), else start a local cluster with
    the dashboard on 127.0.0.1 (stack.md: without it a stopped trial can leak its placement group).
    ``verbose=False``: workers' output stays in their log files (Ray's and each trial's), Ray logs only
    warnings. Returns True when this process started the cluster."""
    if ray.is_initialized():
        return False
    verbose = VERBOSE if verbose is None else verbose
    level = logging.INFO if verbose else logging.ERROR
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train"):  # placement-group cleanup, checkpoint syncing, ...
            logging.getLogger(name).setLevel(logging.ERROR)
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address or None, log_to_driver=verbose, logging_level=level)
        except Exception as err:  # noqa: BLE001 - ConnectionError, auth errors, bad addresses ...
            text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            hint = (
                " (the cluster uses token authentication: export RAY_AUTH_MODE=token)"
                if "auth" in (text + type(err).__name__).lower()
                else ""
            )
            raise UserError(
                f"--address: cannot connect to the Ray cluster at {address or os.environ['RAY_ADDRESS']} "
                f"({type(err).__name__}: {text}){hint}, expected a running cluster "
                "(scripts/start_head.sh) or no --address for a local one"
            ) from None
        return False
    for k, v in LOCAL_CLUSTER_ENV.items():  # read by the raylet and GCS this call starts
        os.environ.setdefault(k, v)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=verbose,
        logging_level=level,
    )
    return True


def check_cluster(workers: int, cpus_per_worker: float, gpus_per_worker: float, num_samples: int) -> int:
    """Refuse trials the cluster can never place (instead of pending forever); returns max concurrent trials."""
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    max_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    if gpus_per_worker > 0 and (need_gpu > gpus or gpus_per_worker > max_gpu):
        raise UserError(
            f"--gpus-per-worker {gpus_per_worker:g} x --workers-per-trial {workers}: a trial needs "
            f"{need_gpu:g} GPUs (up to {gpus_per_worker:g} on one node), but the Ray cluster has "
            f"{gpus:g} GPUs (at most {max_gpu:g} per node); expected fewer workers or "
            "--gpus-per-worker 0"
        )
    if need_cpu > cpus or cpus_per_worker > max_cpu:
        raise UserError(
            f"--workers-per-trial {workers} x {cpus_per_worker:g} CPUs: a trial needs {need_cpu:g} "
            f"CPUs, but the Ray cluster has {cpus:g} (at most {max_cpu:g} per node); expected at most "
            f"{int(cpus // max(cpus_per_worker, 1e-9))} workers per trial"
        )
    limits = [num_samples]
    if need_cpu > 0:
        limits.append(int(cpus // need_cpu))
    if need_gpu > 0:
        limits.append(int(gpus // need_gpu))
    return max(1, min(limits))


def trainer_kind(requested: str, workers: int) -> str:
    """``torch`` (a TorchTrainer per trial) or ``direct`` (the step in the trial's own process): ``auto`` is
    direct for single-worker trials, where a worker group only adds start-up and per-epoch report cost."""
    if requested == "direct" and workers > 1:
        raise UserError(
            f"--trainer direct: runs a trial in one process, but --workers-per-trial is {workers}; "
            "expected --workers-per-trial 1 or --trainer torch/auto"
        )
    if requested == "auto":
        return "direct" if workers == 1 else "torch"
    return requested
