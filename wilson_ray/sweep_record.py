"""The sweep's on-disk trial record: what each trial did, written atomically, read by anyone (no Ray, no MLflow).

``<storage>/<sweep>/trials/<record id>/`` holds one trial (see ``TrialRecord``). The record id is the id of the
Tune trial that first ran it. A Tune trial that the driver lost (killed before Tune's experiment checkpoint
named it) is re-created after a restore under a new Tune id; ``record_id`` maps that id back to the record it
continues (``trials/.aliases/<tune id>``), so the trial keeps one record, one MLflow run and one Optuna trial.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from wilson_ray.atomic import atomic_write_text

ALIASES = ".aliases"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` as floats (booleans as 0/1); NaN, inf and non-numbers are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


class TrialRecord:
    """A trial's files under ``<storage>/<sweep>/trials/<trial_id>/`` (written atomically, read by anyone)::

    trial.json          trial id/name, swept params, full resolved config, step, host and pid of the
                        process that ran it (last; direct trials share reused processes)
    epochs/0001.json    metrics of epoch 1 (every loss term, lr, images/s, mIoU columns, iou/<class>)
    final/              final.json, per_class_iou.{json,csv}, confusion.{npy,csv,png}, iou_bar.png, overlays.png
    outcome.json        {"outcome": completed|stopped_early|failed, "reason": ...}
    failed.json         marker of a deterministic failure (non-finite loss): retries stop early
    mlflow_run.json     {"run_id": ...} once the MLflow run exists
    rungs/0002.json     ASHA's decision at the epoch-2 rung: the trial's value, the cutoff it was compared with
                        and how many results that rung had recorded then (``asha_decision``)
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    # -- writing ----------------------------------------------------------------------------------------------
    def write_trial(
        self,
        trial_id: str,
        trial_name: str,
        params: dict[str, Any],
        config: dict[str, Any],
        step: int,
        sweep: str,
        confirm: dict[str, Any] | None = None,
        old_classes: list[str] | None = None,
    ) -> None:
        """``confirm``: a confirmation trial's group, seed and source trial (``orchestration.confirm``);
        ``old_classes``: the classes learnt before the trial's step, once its config is resolved (the driver labels
        the new classes of any trial's figures with them, one ASHA stopped too, without resolving the config)."""
        old = _read_json(self.dir / "trial.json") or {}
        data = {
            "trial_id": trial_id,
            "trial_name": trial_name,
            "sweep": sweep,
            "step": step,
            "params": params,
            "config": config,
            "started": old.get("started") or time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if confirm is not None:
            data["confirm"] = confirm
        if old_classes is not None:
            data["old_classes"] = list(old_classes)
        if old != json.loads(json.dumps(data, default=str)):
            atomic_write_text(self.dir / "trial.json", json.dumps(data, indent=1, default=str))

    def record_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        data = {"epoch": int(epoch), "time": time.time(), "metrics": finite_metrics(metrics)}
        atomic_write_text(self.dir / "epochs" / f"{int(epoch):04d}.json", json.dumps(data))

    def set_outcome(
        self, outcome: str, reason: str | None = None, overwrite: bool = True, rung: int | None = None
    ) -> None:
        """``rung``: the epoch of the ASHA rung that stopped the trial (``stopped_early``)."""
        if not overwrite and (self.dir / "outcome.json").is_file():
            return
        data = {"outcome": outcome, "reason": reason, "time": time.time()}
        if rung is not None:
            data["rung"] = int(rung)
        atomic_write_text(self.dir / "outcome.json", json.dumps(data))

    def record_rung(self, rung: int, decision: dict[str, Any]) -> None:
        """ASHA's decision for this trial at the ``rung`` epoch (see ``asha_decision``); the first one is kept (a
        restored trial reaching the rung again is not judged again by Ray)."""
        path = self.dir / "rungs" / f"{int(rung):04d}.json"
        if not path.is_file():
            atomic_write_text(path, json.dumps({"rung": int(rung), **decision}))

    def rungs(self) -> dict[int, dict[str, Any]]:
        """ASHA's decisions for this trial, by rung epoch."""
        folder = self.dir / "rungs"
        out = {}
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = _read_json(f)
            if isinstance(data, dict) and "rung" in data:
                out[int(data["rung"])] = data
        return out

    def mark_failed(self, reason: str) -> None:
        atomic_write_text(self.dir / "failed.json", json.dumps({"reason": reason, "time": time.time()}))
        self.set_outcome("failed", reason)

    # -- reading ----------------------------------------------------------------------------------------------
    def trial(self) -> dict[str, Any] | None:
        return _read_json(self.dir / "trial.json")

    def epochs(self) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        folder = self.dir / "epochs"
        if folder.is_dir():
            for f in sorted(folder.glob("*.json")):
                data = _read_json(f)
                if isinstance(data, dict) and "epoch" in data:
                    out[int(data["epoch"])] = data.get("metrics") or {}
        return out

    def final(self) -> dict[str, Any] | None:
        return _read_json(self.dir / "final" / "final.json")

    def outcome(self) -> dict[str, Any] | None:
        return _read_json(self.dir / "outcome.json")

    def failure(self) -> str | None:
        data = _read_json(self.dir / "failed.json")
        return (data or {}).get("reason") if data is not None else None

    def run_id(self) -> str | None:
        return (_read_json(self.dir / "mlflow_run.json") or {}).get("run_id")

    def set_run_id(self, run_id: str) -> None:
        atomic_write_text(self.dir / "mlflow_run.json", json.dumps({"run_id": run_id}))

    def last_eval(self) -> dict[str, float]:
        """Metrics of the last evaluated epoch (the final metrics when the trial completed)."""
        final = self.final()
        if final and final.get("metrics"):
            return dict(final["metrics"])
        for _, m in sorted(self.epochs().items(), reverse=True):
            if "miou_all" in m:
                return dict(m)
        return {}


def asha_decision(
    metric: str, mode: str, value: float, cutoff: float | None, compared: int, reduction_factor: float, stopped: bool
) -> dict[str, Any]:
    """What asynchronous ASHA decided at a rung, in the units of ``metric`` (Ray compares ``value`` with the
    (1 − 1/rf) quantile of the values the rung had *recorded so far*, i.e. of the trials that reached it earlier;
    the first trial at a rung always passes)."""
    return {
        "metric": metric,
        "mode": mode,
        "value": value,
        "cutoff": cutoff,
        "compared": int(compared),
        "quantile": 1.0 - 1.0 / reduction_factor,
        "stopped": bool(stopped),
    }


def explain_rung(d: dict[str, Any]) -> str:
    """One sentence for a rung decision, e.g. ``miou_hm 8.13 < cutoff 19.30 (the median of the 3 results recorded
    at this rung before it)``."""
    metric, value, cutoff, n = d.get("metric"), d.get("value"), d.get("cutoff"), int(d.get("compared") or 0)
    if cutoff is None or n == 0:
        return f"{metric} {value:.2f}, the first result at this rung: no cutoff yet"
    q = float(d.get("quantile") or 0.5)
    which = "the median" if abs(q - 0.5) < 1e-9 else f"the {q:.0%} quantile"
    better = d.get("mode", "max") == "max"
    op = ("<" if better else ">") if d.get("stopped") else (">=" if better else "<=")
    plural = "result" if n == 1 else "results"
    return (
        f"{metric} {value:.2f} {op} cutoff {cutoff:.2f} ({which} of the {n} {plural} recorded at this rung before it)"
    )


def short_names(keys: list[str]) -> dict[str, str]:
    """Readable names of swept config keys: the last part (``method.lambda_loc`` -> ``lambda_loc``) unless two
    keys share it, then the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def rounded(value: Any) -> Any:
    """A swept value as a reader wants it: floats to 3 significant digits (0.5, 1.94, 0.00731), others as is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.3g}")
    return value


def record_id(trials_dir: str | Path, tune_trial_id: str) -> str:
    """The record a Tune trial writes to: its own id, or the lost trial's it continues (see the module doc)."""
    data = _read_json(Path(trials_dir) / ALIASES / f"{tune_trial_id}.json")
    return str(data["record"]) if isinstance(data, dict) and data.get("record") else tune_trial_id


def set_alias(trials_dir: str | Path, tune_trial_id: str, record: str) -> None:
    """Make Tune trial ``tune_trial_id`` continue the record ``record`` (written before the trial starts)."""
    if tune_trial_id != record:
        atomic_write_text(Path(trials_dir) / ALIASES / f"{tune_trial_id}.json", json.dumps({"record": record}))


def any_trial_ended(trials_dir: str | Path) -> bool:
    """Whether a trial of the sweep has ended without failing: completed, or stopped by ASHA (with two trials in
    flight the first to end may be the stopped one)."""
    return any(
        (TrialRecord(p).outcome() or {}).get("outcome") in ("completed", "stopped_early")
        for p in Path(trials_dir).iterdir()
        if p.is_dir()
    )
