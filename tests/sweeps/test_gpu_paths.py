"""The GPU roads of a trial, checked on a CPU (issue 28 point 2: no GPU is lent to most sessions): what a trial with
``--gpus-per-worker`` asks Ray Train for, and the process-group line a worker prints. Nothing starts a cluster."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from ports import free_port

from wilson_ray.config import resolve_config
from wilson_ray.orchestration.settings import TrialPlan
from wilson_ray.orchestration.train_loop import build_trainer, process_group_backend


def _trainer(tmp_path, gpus: float, workers: int = 1):
    plan = TrialPlan(trial_id="t1", step=1, config=resolve_config("demo", method="wilson"), trial_dir=str(tmp_path))
    return build_trainer(plan, storage_path=tmp_path / "st", workers=workers, cpus_per_worker=2, gpus_per_worker=gpus)


@pytest.mark.parametrize("gpus", [1.0, 0.5])
def test_a_gpu_trial_asks_for_nccl_and_a_gpu_per_worker(tmp_path, gpus):
    t = _trainer(tmp_path, gpus, workers=2)
    assert t.backend_config.backend == "nccl"
    sc = t.scaling_config
    assert (sc.num_workers, sc.use_gpu, sc.resources_per_worker) == (2, True, {"CPU": 2, "GPU": gpus})
    # the worker moves its model to ray.train.torch.get_device() only when its plan says so
    assert t.train_loop_config["plan"].use_gpu is True


def test_a_cpu_trial_asks_for_gloo_and_no_gpu(tmp_path):
    t = _trainer(tmp_path, 0.0)
    assert t.backend_config.backend == "gloo"
    sc = t.scaling_config
    assert (sc.use_gpu, sc.resources_per_worker) == (False, {"CPU": 2})
    assert t.train_loop_config["plan"].use_gpu is False


def test_the_workers_process_group_line_reads_the_real_backend(monkeypatch):
    assert process_group_backend() == "none"
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert process_group_backend() == "gloo"
    finally:
        dist.destroy_process_group()
    assert process_group_backend() == "none"
