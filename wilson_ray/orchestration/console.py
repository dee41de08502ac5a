"""What a sweep prints while it runs: the plan, one line per trial event, a progress line with the time left.

The line formats are plain functions (tested without Ray); ``ConsoleReporter`` is the Tune callback that calls
them from the driver. Workers' own output goes to each trial's log file (``trial.py``), not here, unless
``wilson-ray sweep --verbose``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ray import tune

from wilson_ray.sweep_record import TrialRecord, explain_rung, record_id, rounded, short_names


def fmt_params(values: dict[str, Any]) -> str:
    """``alpha=0.31 temperature=1.94 lr=0.0073``: swept values under their short names, rounded."""
    names = short_names(list(values))
    return " ".join(f"{names[k]}={rounded(v)}" for k, v in values.items())


def fmt_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def fmt_miou(metrics: dict[str, Any]) -> str:
    """``old 38.1  new 24.0  all 36.2  hm 29.4`` (the columns a trial is judged on)."""
    parts = []
    for key, label in (("miou_old", "old"), ("miou_new", "new"), ("miou_all", "all"), ("miou_hm", "hm")):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(f"{label} {v:5.1f}")
    return "  ".join(parts)


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials: grace_period · rf^k below max_t (Ray's milestones)."""
    rungs, t = [], float(grace_period)
    while t < max_t:
        rungs.append(int(t))
        t *= reduction_factor
    return rungs


def plan_line(
    name: str,
    num_samples: int,
    workers: int,
    trainer: str,
    concurrency: int,
    epochs: int,
    metric: str,
    rungs: Sequence[int],
    storage: str,
    tracking_uri: str | None,
    reduction_factor: float = 2.0,
    multi_objective: bool = False,
    confirm: Any = None,
) -> str:
    """The sweep's plan in three to five lines: trials, resources, objective, ASHA's rule, the confirmation stage."""
    how = (
        f"a {workers}-worker Ray Train TorchTrainer (DDP) each"
        if trainer == "torch"
        else "1 worker each, in the trial's own process"
    )
    q = 1.0 - 1.0 / reduction_factor
    which = "median" if abs(q - 0.5) < 1e-9 else f"{q:.0%} quantile"
    asha = (
        f"asynchronous ASHA judges each trial when it reaches epoch {', '.join(map(str, rungs))}: it goes on "
        f"if its {metric} is at least the {which} of the results recorded at that rung before it (the first "
        "trial there always goes on)"
        if rungs
        else "no early stopping"
    )
    lines = [
        f"sweep {name}: {num_samples} trials of up to {epochs} epochs, {how}, up to {concurrency} at a time; "
        + (
            f"objective: Optuna's sampler on (miou_old, miou_new) jointly (multi-objective, a Pareto front); ASHA "
            f"needs one number and stops on {metric}"
            if multi_objective
            else f"objective {metric} (the scalar ASHA and Optuna's sampler use)"
        ),
        f"  {asha}",
        *(
            [
                f"  then a seed confirmation: the {confirm.top_k} best "
                + ("Pareto-front members" if confirm.pareto else "trials")
                + (" and the paper default" if confirm.include_default else "")
                + f" again with {confirm.seeds} new training seeds each, full length, no early stopping"
            ]
            if confirm is not None
            else []
        ),
        f"  results: {storage}" + (f"   MLflow: {tracking_uri}" if tracking_uri else ""),
    ]
    return "\n".join(lines)


def started_line(n: int, total: int, trial: str, values: dict[str, Any]) -> str:
    return f"[{n}/{total}] {trial} started   {fmt_params(values)}"


def epoch_line(trial: str, epoch: int, epochs: int, metrics: dict[str, Any]) -> str:
    fresh = metrics.get("evaluated", 1)
    text = fmt_miou(metrics) if fresh else "(no evaluation this epoch)"
    return f"      {trial} epoch {epoch}/{epochs}   {text}"


def stopped_line(trial: str, epoch: int, metric: str, value: float | None, decision: dict | None = None) -> str:
    """A trial ASHA stopped; with the rung's recorded ``decision``, its value against the cutoff it missed."""
    if decision is not None:
        return f"      {trial} stopped by ASHA at the epoch-{epoch} rung: {explain_rung(decision)}"
    v = f" ({metric} {value:.1f})" if isinstance(value, (int, float)) and math.isfinite(value) else ""
    return f"      {trial} stopped by ASHA at the epoch-{epoch} rung{v}: below the cutoff recorded there"


def passed_line(trial: str, epoch: int, decision: dict) -> str:
    return f"      {trial} passed the epoch-{epoch} rung: {explain_rung(decision)}"


def completed_line(trial: str, epochs: int, metrics: dict[str, Any]) -> str:
    return f"      {trial} completed {epochs} epochs   {fmt_miou(metrics)}"


def failed_line(trial: str, reason: str) -> str:
    return f"      {trial} FAILED: {reason}"


def progress_line(done: int, total: int, running: int, left_s: float | None) -> str:
    left = "" if left_s is None else f", at most {fmt_duration(left_s)} left"
    return f"  -- {done}/{total} trials done, {running} running{left}"


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class Eta:
    """Time left, from the trial-epochs seen so far: at most (epochs still to run) × (mean seconds per
    trial-epoch, start-up included) / (trials at a time). An upper bound: ASHA may stop trials early."""

    def __init__(self, total: int, epochs: int, concurrency: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.epochs, self.concurrency, self.clock = total, epochs, max(1, concurrency), clock
        self.begin = clock()
        self.progress: dict[str, int] = {}  # trial -> epochs done
        self.finished: set[str] = set()
        self.busy_s = 0.0  # trial-seconds spent on finished epochs
        self._since: dict[str, float] = {}

    def start(self, trial: str) -> None:
        self.progress.setdefault(trial, 0)
        self._since[trial] = self.clock()

    def epoch(self, trial: str, epoch: int) -> None:
        now = self.clock()
        self.busy_s += now - self._since.get(trial, now)
        self._since[trial] = now
        self.progress[trial] = max(epoch, self.progress.get(trial, 0))

    def finish(self, trial: str) -> None:
        self.finished.add(trial)
        self._since.pop(trial, None)

    def left_s(self) -> float | None:
        done_epochs = sum(self.progress.values())
        if done_epochs == 0:
            return None
        per_epoch = self.busy_s / done_epochs
        running = [t for t in self.progress if t not in self.finished]
        todo = sum(self.epochs - self.progress[t] for t in running)
        todo += (self.total - len(self.progress)) * self.epochs
        return todo * per_epoch / self.concurrency


class ConsoleReporter(tune.Callback):
    """Tune callback: prints each trial's start (its swept values), every epoch's old/new/all, the ASHA stop
    with its rung, completion or failure with the reason, then a progress line with the time left."""

    def __init__(
        self,
        keys: Sequence[str],
        total: int,
        epochs: int,
        concurrency: int,
        metric: str,
        write: Callable[[str], None] | None = None,
        trials_dir: str | Path | None = None,
        values_of: Callable[[Any], dict[str, Any]] | None = None,
    ):
        """``values_of(trial)``: what a trial's start line shows (default: its swept values)."""
        self.trials_dir = Path(trials_dir) if trials_dir is not None else None
        self.values_of = values_of
        self.keys = list(keys)
        self.total, self.epochs, self.metric = total, epochs, metric
        self.eta = Eta(total, epochs, concurrency)
        self.write = write or _print
        self.started: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}

    @staticmethod
    def label(trial) -> str:
        return str(getattr(trial, "trial_id", trial))

    def _progress(self) -> None:
        done = len(self.eta.finished)
        running = len(self.started) - done
        self.write(progress_line(done, self.total, running, self.eta.left_s()))

    def on_trial_start(self, iteration, trials, trial, **info):
        t = self.label(trial)
        if t in self.started:
            return
        self.started[t] = len(self.started) + 1
        self.eta.start(t)
        values = self.values_of(trial) if self.values_of else {k: trial.config.get(k) for k in self.keys}
        self.write(started_line(self.started[t], self.total, t, values))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = self.label(trial)
        epoch = int(result.get("epoch", 0) or 0)
        self.last[t] = dict(result)
        self.eta.epoch(t, epoch)
        self.write(epoch_line(t, epoch, self.epochs, result))
        decision = self._decision(t, epoch)
        if decision is not None and not decision.get("stopped"):
            self.write(passed_line(t, epoch, decision))

    def _decision(self, trial: str, epoch: int) -> dict | None:
        """ASHA's recorded decision for ``trial`` at ``epoch`` (the scheduler writes it before callbacks run)."""
        if self.trials_dir is None:
            return None
        return TrialRecord(self.trials_dir / record_id(self.trials_dir, trial)).rungs().get(epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self.label(trial)
        last = self.last.get(t) or dict(getattr(trial, "last_result", None) or {})
        epoch = int(last.get("epoch", 0) or 0)
        self.eta.finish(t)
        if epoch < self.epochs:
            self.write(stopped_line(t, epoch, self.metric, last.get(self.metric), self._decision(t, epoch)))
        else:
            self.write(completed_line(t, epoch, last))
        self._progress()

    def on_trial_error(self, iteration, trials, trial, **info):
        t = self.label(trial)
        self.eta.finish(t)
        reason = "trial errored"
        try:
            from wilson_ray.orchestration.outcome import one_line

            err = trial.get_error()
            reason = one_line(err) if err is not None else reason
        except Exception:  # noqa: BLE001
            pass
        self.write(failed_line(t, reason))
        self._progress()
