"""What every trial of a sweep needs to know, typed: built once by the driver, shipped to each trial process
(``tune.with_parameters``) and to the outcome callback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wilson_ray.config import Config
from wilson_ray.orchestration.search_space import SearchSpace


@dataclass(frozen=True)
class SweepSettings:
    """The sweep-wide facts a trial reads; ``base`` is the resolved base config as a dict (the trial process puts
    its swept values into a copy, ``trial.trial_config_dict``, and validates it once into the plan's ``Config``)."""

    name: str  # the sweep (MLflow experiment, Optuna study, Tune experiment folder)
    sweep_dir: str  # <storage>/<name>
    step: int  # the incremental step every trial trains
    base: dict[str, Any]
    space: SearchSpace  # the swept parameters (``search_space.trial_overrides`` reads a trial's values)
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    trainer: str = "torch"  # torch: a TorchTrainer per trial; direct: the step in the trial's own process
    max_failures: int = 0  # Train worker-group restarts per trial
    cache_dir: str = ""  # earlier steps' checkpoints, trained once per config hash
    tracking: dict[str, Any] | None = None  # TrackingInfo.to_dict(), None without MLflow
    epochs: int = 1  # the most epochs a trial can run (ASHA's max_t; "stopped early" below it)
    init_checkpoint: str | None = None  # the driver's step t-1 checkpoint when no swept key changes it
    worker_logs: bool = True  # each process of a trial writes its output to the trial's folder (not --verbose)

    @property
    def trials_dir(self) -> Path:
        """The folder of the trial records (``sweep_record``)."""
        return Path(self.sweep_dir) / "trials"


@dataclass(frozen=True)
class TrialPlan:
    """One trial's step, resolved once by the trial process and carried unchanged to the process(es) that train
    it (``train_loop.run_direct`` or every Train worker): the validated ``Config`` with the swept values in it,
    where the trial writes and what it starts from. Nothing downstream re-reads the search space or re-resolves
    the config."""

    trial_id: str
    step: int
    config: Config
    trial_dir: str
    init_checkpoint: str | None = None
    tracking: dict[str, Any] | None = None  # TrackingInfo.to_dict(): rank 0 syncs the trial's MLflow run
    cpus: float = 0.0  # direct trials: the torch threads of the trial's CPU reservation
    use_gpu: bool = False
    worker_logs: bool = False  # each process writes its output to the trial folder
