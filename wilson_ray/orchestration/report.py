"""``wilson-ray report``: one self-contained HTML page (+ the PNGs beside it) of a sweep, from its folder.

Reads the trial records and the Optuna study of ``<storage>/<name>`` (no Ray, no MLflow) and draws: learning
curves of old/new/all mIoU per trial with the ASHA stops, parallel coordinates of the swept values coloured by
the objective and the parameter importances (both Optuna's own), the best objective so far against the
trial-epochs spent, the best trial's per-class IoU (old and new classes apart) and its prediction overlays; with
the trials table, the seed confirmation (mean ± std, 95 % intervals and Welch's test of the best configurations
against the default over fresh seeds) and, for a multi-objective sweep, the old/new Pareto front.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from wilson_ray.atomic import atomic_write_text
from wilson_ray.errors import UserError
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.backends import check_optuna_storage, is_sqlite, redact, without_password
from wilson_ray.orchestration.confirm import (
    format_interval,
    format_stored,
    read_stage,
    search_front,
    shown_columns,
)
from wilson_ray.sweep_record import rounded, short_names
from wilson_ray.tracking import plots

MIN_TRIALS_FOR_IMPORTANCE = 10  # fANOVA on fewer completed trials gives near-flat, unstable importances


def _optuna_figure(kind: str, study, path: Path, metric: str) -> Path | None:
    """Optuna's matplotlib figure ``kind`` (param_importances / parallel_coordinate) of the finished trials."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    plt = plots.pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) < 2:
            return None
        multi = len(study.directions) > 1
        if kind == "pareto_front":
            ax = ovm.plot_pareto_front(study, target_names=["old mIoU", "new mIoU"])
        elif kind == "param_importances":
            ax = ovm.plot_param_importances(
                study, target=(lambda t: _hm(t.values)) if multi else None, target_name=metric
            )
            if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
                ax.text(
                    0.98,
                    0.02,
                    f"from {len(done)} completed trials: too few for reliable importances",
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize=9,
                    color="darkred",
                    bbox={"facecolor": "white", "edgecolor": "darkred", "alpha": 0.9},
                )
        else:
            ax = ovm.plot_parallel_coordinate(
                study, target=(lambda t: _hm(t.values)) if multi else None, target_name=metric
            )
            _visible_lines(ax)
        fig = ax.figure if hasattr(ax, "figure") else plt.gcf()
        fig.set_size_inches(10, 4.2)
        fig.tight_layout()
    return plots.save_figure(fig, path)


def _hm(values: list[float]) -> float:
    """The harmonic mean of a multi-objective trial's (old, new) mIoU: one number to colour its line by."""
    a, b = values[0], values[1]
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _stage_html(stage: dict[str, Any], fig: Path | None) -> str:
    """The seed confirmation section: per configuration mean ± std and 95 % interval of the objective and of
    old/new mIoU, the p-value against the default, the test and its verdict."""
    cols = shown_columns(stage["metric"])
    head = ["config", "trial", "seeds"]
    for c in cols:
        head += [f"{c} mean ± std", f"{c} 95 % interval"]
    head.append("p vs default")
    out = ["<h2>Seed confirmation</h2>", "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)]
    for g, s in stage["groups"].items():
        p = (s.get("vs_default") or {}).get("p")
        cls = ' class="best"' if g == stage.get("best") else ""
        cells = [g, s.get("source_trial") or "-", ", ".join(map(str, s["seeds"]))]
        for c in cols:
            cells += [format_stored(s[c]), format_interval(s[c])]
        cells.append("-" if p is None else f"{p:.3g}")
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    if stage.get("test"):
        out.append(f"<p><small>{html.escape(stage['test'])}; seeds not used by the search.</small></p>")
    out.append(_img(fig, "each seed's value, the mean and its 95 % Student-t interval per configuration"))
    return "\n".join(out)


def _front_html(front: list[dict[str, Any]], confirm: dict[str, Any] | None) -> str:
    """The multi-objective sweep's answer in words: the old/new Pareto front's members and their values, and
    (without a confirmation stage of the front, ``confirm``) how to confirm them over fresh seeds."""
    if not front:
        return "<p>Pareto front of old vs new mIoU: no completed trial with both values.</p>"
    members = "; ".join(f"{r['trial']} (old {r['miou_old']:.2f}, new {r['miou_new']:.2f})" for r in front)
    hint = (
        ""
        if (confirm or {}).get("pareto")
        else "; add <code>confirm: {pareto: true}</code> to the search space to confirm them over fresh seeds"
    )
    return (
        f"<p>Pareto front of old vs new mIoU: {len(front)} completed trial{'s' if len(front) > 1 else ''} that no "
        f"other completed trial beats on both, best old mIoU first: {html.escape(members)}. Marked (Pareto) in "
        f"the trials table{hint}.</p>"
    )


def _visible_lines(ax) -> None:
    """Optuna draws parallel coordinates with the light-to-dark "Blues" map, so the lowest trial is almost white
    on white; re-colour the lines (and their colour bar) with viridis, whose every colour shows."""
    from matplotlib.collections import LineCollection

    for coll in ax.collections:
        if isinstance(coll, LineCollection) and coll.get_array() is not None:
            coll.set_cmap("viridis")
            coll.set_linewidth(1.8)
            if getattr(coll, "colorbar", None) is not None:
                coll.colorbar.update_normal(coll)


def best_so_far(
    rows: list[dict[str, Any]], records: dict[str, dict[int, dict]], metric: str, mode: str
) -> tuple[list[tuple[int, float]], list[float], list[tuple[int, float]]]:
    """(every evaluation as (trial-epoch index, value), the best final value so far after each, the trials' final
    values). A trial counts when it ends, with the value of its last evaluation (the value the summary ranks it
    by), so the curve ends at the reported best; intermediate epochs are shown, never counted."""
    ended = {r["trial"] for r in rows if r["outcome"] in ("completed", "stopped_early")}
    events = sorted(
        (m.get("_time", 0.0), tid, e, m.get(metric))
        for tid, epochs in records.items()
        for e, m in epochs.items()
        if m.get("evaluated", 1) and isinstance(m.get(metric), (int, float))
    )
    last_epoch = {tid: max(epochs) for tid, epochs in records.items() if epochs}
    points, ys, finals, best = [], [], [], None
    for i, (_, tid, e, v) in enumerate(events, 1):
        if tid in ended and e == last_epoch.get(tid) and math.isfinite(v):
            best = v if best is None else (max(best, v) if mode == "max" else min(best, v))
            finals.append((i, v))
        points.append((i, v))
        ys.append(best if best is not None else float("nan"))
    return points, ys, finals


def best_so_far_png(
    rows: list[dict[str, Any]], records: dict[str, dict[int, dict]], metric: str, mode: str, path: Path
) -> Path:
    """``best_so_far`` against the trial-epochs spent: the red step line, each evaluation a grey dot."""
    points, ys, finals = best_so_far(rows, records, metric, mode)
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if points:
        xs = [i for i, _ in points]
        ax.step(xs, ys, where="post", color="tab:red", label="best final value so far")
        ax.scatter(xs, [v for _, v in points], s=10, color="grey", alpha=0.5, label="each evaluation")
    if finals:
        ax.scatter(*zip(*finals), s=28, color="tab:red", zorder=3, label="a trial's final value")
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel(metric)
    ax.set_title(f"best {metric} so far ({len(rows)} trials)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save_figure(fig, path)


def _epochs_with_time(rec) -> dict[int, dict]:
    import json

    out = {}
    folder = rec.dir / "epochs"
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out[int(data["epoch"])] = {**(data.get("metrics") or {}), "_time": data.get("time", 0.0)}
    return out


def comparison(
    rows: list[dict[str, Any]],
    metric: str,
    mode: str,
    defaults: dict[str, Any] | None,
    stage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The best trial against the paper-default trial. With a seed confirmation stage (``confirm.summarize_stage``)
    the verdict is its test over fresh seeds; without one, the single-seed margin and how to measure the spread."""
    best = R.best_row(rows, metric, mode)
    default = next((r for r in rows if defaults and _same(r["params"], defaults)), None)
    out: dict[str, Any] = {"best": best, "default": default, "metric": metric}
    if stage and stage.get("verdict"):
        out["text"] = stage["verdict"]
        out["margin"] = (stage["groups"][stage["best"]].get("vs_default") or {}).get("diff")
        return out
    if best is None or default is None or not isinstance(default.get(metric), (int, float)):
        out["text"] = "no paper-default trial with an evaluation to compare with"
        return out
    how = "one seed each, no seed spread measured: add 'confirm: {top_k: 2, seeds: 3}' to the search space to test it"
    if best["trial"] == default["trial"]:
        out["text"] = (
            f"the paper-default trial is the best ({metric} {default[metric]:.2f}): on this data and budget the "
            f"sweep found nothing better than the paper's values ({how})"
        )
        return out
    if default.get("outcome") == "stopped_early" and best.get("outcome") != "stopped_early":
        # its value is from the epoch ASHA stopped it at: a margin against it would credit the sweep with the
        # default's missing epochs
        out["text"] = (
            f"best trial {best['trial']} {metric} {best[metric]:.2f}; the paper-default trial {default['trial']} "
            f"was stopped by ASHA at epoch {default.get('epochs')} ({metric} {default[metric]:.2f} there), so "
            f"there is no full-length run of it to compare with ({how})"
        )
        return out
    out["margin"] = best[metric] - default[metric]
    out["text"] = (
        f"best trial {best['trial']} {metric} {best[metric]:.2f} vs paper default {default[metric]:.2f}: margin "
        f"{out['margin']:+.2f} ({how})"
    )
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for k, v in b.items():
        x = a.get(k)
        if isinstance(v, float) or isinstance(x, float):
            if not (isinstance(x, (int, float)) and isinstance(v, (int, float)) and math.isclose(x, v, rel_tol=1e-9)):
                return False
        elif x != v:
            return False
    return True


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>'
        f"{html.escape(alt)}</figcaption></figure>"
    )


def _table(
    rows: list[dict[str, Any]],
    keys: list[str],
    best: dict[str, Any] | None,
    default_id: str | None,
    front: frozenset[str] = frozenset(),
) -> str:
    names = short_names(keys)
    head = ["trial", *[names[k] for k in keys], "old", "new", "all", "hm", "epochs", "outcome"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ' class="best"' if best and r["trial"] == best["trial"] else ""
        tag = (" (default)" if r["trial"] == default_id else "") + (" (Pareto)" if r["trial"] in front else "")
        cells = [
            f"{r['trial']}{tag}",
            *[rounded(r["params"].get(k)) for k in keys],
            *[
                f"{r[m]:.2f}" if isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) else "-"
                for m in ("miou_old", "miou_new", "miou_all", "miou_hm")
            ],
            r["epochs"],
            (r.get("reason") or r["outcome"]) if r["outcome"] != "completed" else "completed",
        ]
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


STYLE = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:1.5em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
tr.best{background:#fff3c4}.verdict{font-size:1.05em;background:#eef5ff;padding:.6em;border-left:4px solid #36c}"""


def load_study(sweep: dict[str, Any], folder: Path, name: str, override: str | None = None):
    """The sweep's Optuna study and, when it cannot be opened, a line saying why (else ``None``).

    Where it lives: ``override`` (``report --optuna-storage``), else the storage the sweep recorded (a server's URL
    is recorded with its password redacted, so it is reopened without one: libpq reads ``PGPASSWORD`` or
    ``~/.pgpass``), else the SQLite file in the sweep folder."""
    recorded = sweep.get("optuna_storage")
    if override:
        url = check_optuna_storage(override)
    elif recorded and not is_sqlite(recorded):
        url = without_password(recorded) if "***" in recorded else recorded
    elif (folder / "optuna.db").is_file():
        url = f"sqlite:///{folder / 'optuna.db'}"
    else:
        return None, f"no Optuna study found (no {folder / 'optuna.db'} and no --optuna-storage)"
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=url), None
    except Exception as err:  # noqa: BLE001 - the report still has everything that needs no study
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return None, (
            f"the Optuna study '{name}' at {redact(url)} could not be opened ({why}); pass "
            "--optuna-storage URL with its password, or set PGPASSWORD"
        )


def build_report(
    storage: str | Path, name: str, out: str | Path | None = None, optuna_storage: str | None = None
) -> Path:
    """Write ``<out>/report.html`` (images inlined) and its PNGs; ``out`` defaults to ``<sweep>/report``.
    ``optuna_storage`` opens the study where the recorded URL cannot (see ``load_study``)."""
    folder = R.sweep_dir(storage, name)
    sweep = R.read_sweep(storage, name)
    if sweep is None:
        raise UserError(
            f"--storage/--name: no sweep '{name}' under {Path(storage).expanduser()} "
            f"(no {folder / R.SWEEP_FILE}), expected the --storage and --name of a sweep"
        )
    rows = R.trial_rows(storage, name)
    if not rows:
        raise UserError(f"sweep '{name}' at {folder}: no trial records yet, expected at least one trial")
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    metric, mode = sweep.get("metric", "miou_all"), sweep.get("mode", "max")
    keys = list(sweep.get("keys") or [])
    recs = {(r.trial() or {}).get("trial_id"): r for r in R.records(storage, name)}
    epochs = {tid: _epochs_with_time(rec) for tid, rec in recs.items()}
    best = R.best_row(rows, metric, mode)
    stopped = {r["trial"]: r["epochs"] for r in rows if r["outcome"] == "stopped_early"}
    max_epochs = int(sweep.get("epochs") or max((r["epochs"] for r in rows), default=1))
    figs: dict[str, Path | None] = {}
    figs["curves"] = plots.learning_curves_png(
        epochs,
        out / "curves.png",
        stopped=stopped,
        best=best and best["trial"],
        max_epochs=max_epochs,
        marks=sweep.get("rungs") or (),
    )
    figs["best_so_far"] = best_so_far_png(rows, epochs, metric, mode, out / "best_so_far.png")
    study, study_note = load_study(sweep, folder, name, optuna_storage)
    for kind in ("parallel_coordinate", "param_importances"):
        figs[kind] = None
        if study is not None:
            try:
                figs[kind] = _optuna_figure(kind, study, out / f"{kind}.png", metric)
            except Exception:  # noqa: BLE001 - e.g. importances of a single distinct value
                figs[kind] = None
    figs["best_iou"] = figs["overlays"] = None
    if best is not None:
        src = recs[best["trial"]].dir
        for key, fname in (("best_iou", "iou_bar.png"), ("overlays", "overlays.png")):
            for sub in ("final", "summary"):
                if (src / sub / fname).is_file():
                    figs[key] = Path(shutil.copyfile(src / sub / fname, out / f"best_{fname}"))
                    break
    stage = read_stage(folder)
    if stage:
        figs["confirm"] = plots.confirmation_png(stage, out / "confirm.png")
    figs["pareto"] = None
    if study is not None and sweep.get("multi_objective"):
        try:
            figs["pareto"] = _optuna_figure("pareto_front", study, out / "pareto_front.png", metric)
        except Exception:  # noqa: BLE001
            figs["pareto"] = None
    front = search_front(rows) if sweep.get("multi_objective") else []
    cmp = comparison(rows, metric, mode, sweep.get("defaults"), stage)
    default_id = cmp["default"]["trial"] if cmp.get("default") else None
    n_done = sum(r["outcome"] == "completed" for r in rows)
    importance_note = (
        f"; from {n_done} completed trials, fewer than {MIN_TRIALS_FOR_IMPORTANCE}: treat them as a rough hint"
        if n_done < MIN_TRIALS_FOR_IMPORTANCE
        else ""
    )
    n_stop = sum(r["outcome"] == "stopped_early" for r in rows)
    task = (sweep.get("base") or {}).get("data", {}).get("task")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {html.escape(name)}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep {html.escape(name)}</h1>",
        f"<p>{len(rows)} trials ({n_done} completed, {n_stop} stopped early by ASHA, "
        f"{sum(r['outcome'] == 'failed' for r in rows)} failed); objective <b>{html.escape(metric)}</b> ({mode}); "
        f"step {sweep.get('step')} of task {html.escape(str(task))}.</p>",
        f"<p class='verdict'>{html.escape(cmp['text'])}</p>",
        _stage_html(stage, figs.get("confirm")) if stage else "",
        "<h2>Trials</h2>",
        _table(rows, keys, best, default_id, frozenset(r["trial"] for r in front)),
        "<h2>Learning curves</h2>",
        _img(figs["curves"], "old / new / all mIoU and miou_hm per epoch; x = stopped by ASHA"),
        "<h2>Search</h2>",
        f"<p><em>{html.escape(study_note)}</em></p>" if study_note else "",
        _img(
            figs["parallel_coordinate"],
            f"parallel coordinates of the swept values, coloured by {metric} (completed trials; Optuna)",
        ),
        _img(figs["param_importances"], f"parameter importances for {metric} (Optuna, fANOVA){importance_note}"),
        _img(figs["pareto"], "Pareto front of old vs new mIoU (Optuna; red: the non-dominated trials)")
        + _front_html(front, sweep.get("confirm"))
        if sweep.get("multi_objective")
        else "",
        _img(figs["best_so_far"], "best final objective so far against trial-epochs spent (grey: every evaluation)"),
        f"<h2>Best trial {html.escape(str(best and best['trial']))}</h2>",
        _img(figs["best_iou"], "per-class IoU (old classes blue, new classes orange)"),
        _img(
            figs["overlays"],
            "validation images: image, ground truth, prediction (and the localizer's map "
            "and pseudo-label where the method has them)",
        ),
        "</body></html>",
    ]
    return Path(atomic_write_text(out / "report.html", "\n".join(parts)))
