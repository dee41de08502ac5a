"""The seed confirmation stage: after the search, the best configurations and the paper default again, with fresh
training seeds, so the sweep's verdict rests on seed noise it measured itself.

``plan_points`` picks the configurations (the ``top_k`` best completed trials, or the members of the old/new Pareto
front, plus the default) and gives each ``seeds`` training seeds; ``run_confirmation`` runs them as ordinary Tune
trials of a second Tune experiment ``<sweep>/confirm`` (restored by ``Tuner.restore`` like the search, each trial
recorded under ``<sweep>/confirm/trials`` and an MLflow child run tagged with its group and seed; a point that a
killed driver had already started continues its record, ``existing_record``);
``summarize`` turns the records into mean ± std, the 95 % interval and Welch's t-test of each configuration
against the default (``wilson_ray.stats``), written to ``<sweep>/confirm.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wilson_ray.atomic import atomic_write_text
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.search_space import SearchSpace
from wilson_ray.stats import summarize, welch

FOLDER = "confirm"  # <sweep>/confirm: the stage's Tune experiment and its trial records
CONFIG_KEY = "confirm"  # the Tune config key of a confirmation trial's point
COLUMNS = ("miou_old", "miou_new", "miou_all", "miou_hm")
LABELS = {"miou_old": "old", "miou_new": "new"}  # short headers of the console table


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal swept values (floats up to rounding: Optuna stores what the YAML said)."""
    for k, v in b.items():
        x = a.get(k)
        if isinstance(v, float) or isinstance(x, float):
            if not (isinstance(x, (int, float)) and isinstance(v, (int, float)) and math.isclose(x, v, rel_tol=1e-9)):
                return False
        elif x != v:
            return False
    return True


def pareto_front(rows: list[dict[str, Any]], keys: tuple[str, str] = ("miou_old", "miou_new")) -> list[dict]:
    """The rows no other row beats on both ``keys`` (both maximised): the stability/plasticity front."""
    ok = [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)]
    a, b = keys
    return [
        r
        for r in ok
        if not any(o[a] >= r[a] and o[b] >= r[b] and (o[a] > r[a] or o[b] > r[b]) for o in ok if o is not r)
    ]


def plan_points(rows: list[dict[str, Any]], space: SearchSpace, base_seed: int) -> list[dict[str, Any]]:
    """The confirmation trials: one point per (configuration, seed), in a fixed order.

    Configurations: the default (``group`` "default", when ``confirm.include_default``) and the ``top_k`` best
    completed trials by the objective other than the default (``top1`` .. ``topK``), or with ``confirm.pareto``
    the Pareto-front members of old vs new mIoU (the ``top_k`` of them best by the objective). Seeds: run.seed
    + 1 .. run.seed + ``seeds``, the same for every configuration (the search ran run.seed itself, and its best
    trials were chosen on that seed's noise)."""
    conf = space.confirm
    if conf is None:
        return []
    defaults = space.defaults()
    done = [r for r in rows if r["outcome"] == "completed" and isinstance(r.get(space.metric), (int, float))]
    pool = pareto_front(done) if conf.pareto else done
    pool = sorted(pool, key=lambda r: r[space.metric], reverse=space.mode == "max")
    chosen = [r for r in pool if not _same(r["params"], defaults)][: conf.top_k]
    groups: list[tuple[str, dict[str, Any], str | None]] = []
    if conf.include_default:
        src = next((r["trial"] for r in rows if _same(r["params"], defaults)), None)
        groups.append(("default", dict(defaults), src))
    groups += [(f"top{i + 1}", dict(r["params"]), r["trial"]) for i, r in enumerate(chosen)]
    seeds = [base_seed + 1 + i for i in range(conf.seeds)]
    return [{"group": g, "seed": s, "values": values, "source_trial": src} for g, values, src in groups for s in seeds]


def search_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The search's completed trials on the old/new Pareto front (``pareto_front``), best old mIoU first: the
    front a multi-objective sweep reports (Optuna's own front, too, holds its completed trials only)."""
    front = pareto_front([r for r in rows if r["outcome"] == "completed"])
    return sorted(front, key=lambda r: (-r["miou_old"], -r["miou_new"], str(r["trial"])))


def existing_record(sweep_path: Path, point: dict[str, Any]) -> str | None:
    """The record (folder name under ``<sweep>/confirm/trials``) that an earlier driver's trial of ``point``
    (same group, seed and source trial) already wrote, or None: a Tune trial the current driver creates for that
    point continues it instead of opening a second record and MLflow run for the same (configuration, seed)."""
    want = (point["group"], point["seed"], point.get("source_trial"))
    for rec in R.records(sweep_path, FOLDER):  # sorted by name: the same answer on every call
        meta = (rec.trial() or {}).get("confirm") or {}
        if (meta.get("group"), meta.get("seed"), meta.get("source_trial")) == want:
            return rec.dir.name
    return None


def confirm_rows(sweep_path: Path) -> list[dict[str, Any]]:
    """The confirmation trials' rows (``results.trial_rows``) with their ``group``, ``seed`` and source trial."""
    rows = R.trial_rows(sweep_path, FOLDER)
    by_id = {rec.dir.name: rec.trial() or {} for rec in R.records(sweep_path, FOLDER)}
    for row in rows:
        meta = (by_id.get(row["trial"]) or {}).get("confirm") or {}
        row.update(group=meta.get("group"), seed=meta.get("seed"), source_trial=meta.get("source_trial"))
    return [r for r in rows if r["group"] is not None]


def summarize_stage(sweep_path: Path, metric: str, mode: str) -> dict[str, Any] | None:
    """Per configuration: n, mean, std and 95 % interval of ``metric`` and of old/new/all mIoU over its seeds;
    per candidate, Welch's one-sided t-test against the default at 5 % / K (Bonferroni over the K candidates);
    the verdict. Written to ``<sweep>/confirm.json``; None when the stage has no finished trial."""
    rows = [r for r in confirm_rows(sweep_path) if r["outcome"] == "completed"]
    if not rows:
        return None
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["group"] != "default", r["group"], r["seed"])):
        groups.setdefault(r["group"], []).append(r)
    cols = list(dict.fromkeys([metric, *COLUMNS]))
    out: dict[str, Any] = {"metric": metric, "mode": mode, "groups": {}, "test": None}
    for g, rs in groups.items():
        out["groups"][g] = {
            "source_trial": rs[0]["source_trial"],
            "params": rs[0]["params"],
            "seeds": [r["seed"] for r in rs],
            "values": {c: [r.get(c) for r in rs] for c in cols},
            **{c: summarize([r.get(c) for r in rs]).as_dict() for c in cols},
        }
    candidates = [g for g in groups if g != "default"]
    if "default" in groups and candidates:
        confidence = 1 - 0.05 / len(candidates)
        tests = {
            g: welch(
                out["groups"][g]["values"][metric],
                out["groups"]["default"]["values"][metric],
                mode=mode,
                confidence=confidence,
            )
            for g in candidates
        }
        for g, t in tests.items():
            out["groups"][g]["vs_default"] = t.as_dict()
        sign = 1 if mode == "max" else -1
        means = {g: out["groups"][g][metric]["mean"] for g in candidates}
        best = max(candidates, key=lambda g: -math.inf if means[g] is None else sign * means[g])
        out["best"] = best
        out["test"] = (
            f"Welch's t-test, one-sided (is the configuration's mean {metric} {'above' if mode == 'max' else 'below'} "
            f"the default's?), level 0.05 / {len(candidates)} (Bonferroni over {len(candidates)} candidates)"
        )
        out["verdict"] = verdict(out, best, tests[best])
    atomic_write_text(Path(sweep_path) / "confirm.json", json.dumps(out, indent=1, default=str))
    return out


def verdict(stage: dict[str, Any], best: str, test) -> str:
    """One sentence: does the best confirmed configuration beat the default, with the numbers behind it."""
    metric = stage["metric"]
    b, d = stage["groups"][best], stage["groups"]["default"]
    n_b, n_d = b[metric]["n"], d[metric]["n"]
    text = (
        f"confirmed over {n_b} seeds: {best} (trial {b['source_trial']}) {metric} {_ms(b, metric)} vs the paper "
        f"default {_ms(d, metric)} over {n_d} seeds: difference {test.diff:+.2f}"
    )
    if math.isnan(test.p):
        text += " (too few finished seeds for a test)"
    else:
        text += f" [{100 * (1 - test.alpha):.3g} % interval {test.low:+.2f}, {test.high:+.2f}], Welch p = {test.p:.3g}"
        if test.significant:
            text += f": a real improvement (p < {test.alpha:.3g})"
        else:
            text += f": not significant at {test.alpha:.3g}, so the sweep has not shown that it beats the default"
    if metric not in ("miou_old", "miou_new") and b["miou_old"].get("mean") is not None:
        # what the difference is made of: a step can win the harmonic mean by trading old classes for new ones
        text += (
            f"; old {format_stored(b['miou_old'])} vs {format_stored(d['miou_old'])}, "
            f"new {format_stored(b['miou_new'])} vs {format_stored(d['miou_new'])}"
        )
    return text


def _ms(group: dict[str, Any], metric: str) -> str:
    return format_stored(group[metric])


def shown_columns(metric: str) -> list[str]:
    """The columns a confirmation table shows: the objective, then old and new mIoU (once each: an objective of
    old or new mIoU is not shown twice)."""
    return list(dict.fromkeys([metric, "miou_old", "miou_new"]))


def table_lines(stage: dict[str, Any]) -> list[str]:
    """The stage as a plain-text table: per configuration its source trial and seeds, then for the objective and
    old/new mIoU each ``mean ± std [95 % interval]``, and the one-sided p-value against the default."""
    cols = shown_columns(stage["metric"])
    # the objective under its own name (also when it is old or new mIoU), the others as "old" / "new"
    head = ["config", "trial", "seeds", *(f"{c if i == 0 else LABELS[c]} [95% CI]" for i, c in enumerate(cols)), "p"]
    rows = []
    for g, s in stage["groups"].items():
        p = (s.get("vs_default") or {}).get("p")
        rows.append(
            [g, str(s["source_trial"] or "-"), str(s[cols[0]]["n"])]
            + [format_stored(s[c]) + _interval(s[c]) for c in cols]
            + ["-" if p is None else f"{p:.3g}"]
        )
    # widths from the cells: a mean of 100 or a std of 10 widens its column instead of shifting the next one
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {2}  # the seed count, right-aligned under its header
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, width))).rstrip()
        for r in [head, *rows]
    ]


def _interval(d: dict[str, Any]) -> str:
    return f" [{d['low']:.2f}, {d['high']:.2f}]" if d.get("low") is not None else ""


def format_interval(d: dict[str, Any]) -> str:
    """A stored summary's 95 % interval as ``"[27.52, 32.48]"``, ``"-"`` without one (fewer than two seeds)."""
    return _interval(d).strip() or "-"


def format_stored(d: dict[str, Any]) -> str:
    """A stored summary (``Summary.as_dict``) as ``"29.50 ± 1.20"``."""
    if d.get("mean") is None:
        return "-"
    return f"{d['mean']:.2f} ± {d['std']:.2f}" if d.get("std") is not None else f"{d['mean']:.2f}"


def read_stage(sweep_path: Path) -> dict[str, Any] | None:
    """``<sweep>/confirm.json`` when the stage ran."""
    try:
        return json.loads((Path(sweep_path) / "confirm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
