"""A sweep's folder and its results, readable without Ray or MLflow (``wilson-ray best``, summaries, tests).

Layout of ``<storage>/<name>/`` (the Tune experiment folder)::

    sweep.json              what the sweep is: search-space fingerprint, objective, step, swept keys, base config
    optuna.db               the Optuna study (``optuna-dashboard sqlite:///.../optuna.db``)
    trials/<trial_id>/      one ``TrialRecord`` per trial (see ``wilson_ray.sweep_record``)
    train/<trial_id>/       the trial's Ray Train run (epoch checkpoints)
    best.yaml               the best trial's full resolved config (``wilson-ray train --config best.yaml``)
    summary.json/.csv/.png  the trials table and the sweep plot
    <Tune's own files>      experiment state, per-trial result.json
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from wilson_ray.atomic import atomic_write_text
from wilson_ray.errors import UserError
from wilson_ray.sweep_record import TrialRecord, rounded, short_names

SWEEP_FILE = "sweep.json"


def sweep_dir(storage: str | Path, name: str) -> Path:
    return Path(storage).expanduser().resolve() / name


def check_storage(storage: str | Path, flag: str = "--storage") -> Path:
    """Create ``storage`` if needed and prove it is writable (one-line UserError otherwise)."""
    path = Path(storage).expanduser()
    try:
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".wilson-ray-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{flag}: {storage} is not a writable folder ({err.strerror or err}), expected a folder "
            "this user can create files in"
        ) from None
    return path


def read_sweep(storage: str | Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((sweep_dir(storage, name) / SWEEP_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_sweep(storage: str | Path, name: str, data: dict[str, Any]) -> None:
    atomic_write_text(sweep_dir(storage, name) / SWEEP_FILE, json.dumps(data, indent=1, default=str))


def records(storage: str | Path, name: str) -> list[TrialRecord]:
    folder = sweep_dir(storage, name) / "trials"
    if not folder.is_dir():
        return []
    recs = [TrialRecord(p) for p in sorted(folder.iterdir()) if p.is_dir()]
    return [r for r in recs if r.trial() is not None]


def trial_rows(storage: str | Path, name: str) -> list[dict[str, Any]]:
    """One row per trial: id, swept params, mIoU old/new/all of its last evaluation, epochs, outcome, reason."""
    rows = []
    for rec in records(storage, name):
        trial = rec.trial() or {}
        last = rec.last_eval()
        epochs = rec.epochs()
        outcome = rec.outcome() or {}
        rows.append(
            {
                "trial": trial.get("trial_id"),
                "name": trial.get("trial_name"),
                "params": trial.get("params") or {},
                "miou_old": last.get("miou_old"),
                "miou_new": last.get("miou_new"),
                "miou_all": last.get("miou_all"),
                "miou_all_mib": last.get("miou_all_mib"),
                "miou_hm": last.get("miou_hm"),
                "epochs": max(epochs) if epochs else 0,
                "outcome": outcome.get("outcome") or ("failed" if rec.failure() else "incomplete"),
                "reason": outcome.get("reason") or rec.failure(),
                "config": trial.get("config"),
                "_epochs": {e: m for e, m in epochs.items() if "miou_all" in m and m.get("evaluated", 1)},
            }
        )
    return rows


def metric_curve(row: dict[str, Any], metric: str) -> list[tuple[int, float]]:
    """[(epoch, value of ``metric``)] of a trial row's evaluated epochs (those that have the metric)."""
    return [(e, m[metric]) for e, m in sorted(row["_epochs"].items()) if _ok(m.get(metric))]


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def best_row(rows: list[dict[str, Any]], metric: str = "miou_all", mode: str = "max") -> dict[str, Any] | None:
    """The best trial by ``metric`` of its last evaluation (failed trials excluded)."""
    ok = [r for r in rows if r["outcome"] != "failed" and _ok(r.get(metric))]
    if not ok:
        return None
    return (max if mode == "max" else min)(ok, key=lambda r: r[metric])


def _fmt(v: Any) -> str:
    if _ok(v):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0").rstrip(".")
    return "-" if v is None else str(v)


def format_table(rows: list[dict[str, Any]], keys: list[str], best: dict[str, Any] | None = None) -> str:
    """Plain-text table of trials: id, swept values, old/new/all mIoU, epochs, outcome, failure reason."""
    names = short_names(keys)
    short = [names[k] for k in keys]
    header = ["trial", *short, "old", "new", "all", "hm", "ep", "status", "reason"]
    body = []
    for r in rows:
        mark = "*" if best is not None and r["trial"] == best["trial"] else ""
        reason = r.get("reason") or ""
        reason = reason.splitlines()[-1] if reason else ""
        body.append(
            [
                f"{r['trial']}{mark}",
                *[_fmt(rounded(r["params"].get(k))) for k in keys],
                *[f"{r[m]:.2f}" if _ok(r.get(m)) else "-" for m in ("miou_old", "miou_new", "miou_all", "miou_hm")],
                str(r["epochs"]),
                r["outcome"],
                reason[:110],
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)] if body else [len(h) for h in header]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(b) for b in body]])


def best_config_text(row: dict[str, Any], sweep: dict[str, Any] | None) -> str:
    """The best trial's resolved config as YAML, with a header that says where it came from."""
    from wilson_ray.config import config_from_dict, dump_config

    cfg = config_from_dict(row["config"], source=f"trial {row['trial']}")
    metric = (sweep or {}).get("metric", "miou_all")
    head = [
        f"# best trial {row['trial']} of sweep {(sweep or {}).get('name', '?')} "
        f"({metric} {row.get(metric) if row.get(metric) is None else round(row[metric], 3)}, "
        f"step {(sweep or {}).get('step', '?')})",
        "# swept: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row["params"].items()),
        "# reproduce: wilson-ray train --config <this file>"
        + (f" --cache-dir {sweep['cache_dir']}" if sweep and sweep.get("cache_dir") else ""),
    ]
    return "\n".join(head) + "\n" + dump_config(cfg)


def export_best(storage: str | Path, name: str, out: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write the best trial's full resolved config to ``out`` (atomically); returns (path, row)."""
    folder = sweep_dir(storage, name)
    sweep = read_sweep(storage, name)
    if sweep is None and not (folder / "trials").is_dir():
        raise UserError(
            f"--storage/--name: no sweep '{name}' under {Path(storage).expanduser()} "
            f"(no {folder / SWEEP_FILE}), expected the --storage and --name of a sweep"
        )
    rows = trial_rows(storage, name)
    best = best_row(rows, (sweep or {}).get("metric", "miou_all"), (sweep or {}).get("mode", "max"))
    if best is None:
        raise UserError(
            f"sweep '{name}' at {folder}: none of its {len(rows)} trials has an evaluation yet, "
            "expected at least one evaluated trial"
        )
    path = atomic_write_text(out, best_config_text(best, sweep))
    return Path(path), best
