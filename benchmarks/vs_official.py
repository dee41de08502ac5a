"""The official WILSON code against ours, side by side: seconds per iteration and peak RSS, each run a fresh process.

    git clone https://github.com/fcdl94/WILSON /path/to/WILSON
    python -m benchmarks.vs_official --official /path/to/WILSON --out benchmarks/results/vs_official.json

For each configuration (WILSON step 1 at 4 x 256², step 1 at 2 x 512², step 0 at 2 x 512²; ResNet-101, random
init, random data) it runs three variants, each in a fresh Python process:

- ``official``: ``python -m benchmarks.official_step --official PATH`` (the official ``Trainer.train`` loop body;
  fp32 on a CPU, see that module);
- ``fast``: ``python -m benchmarks.step --backbone resnet101 --method wilson`` (our fast path on this hardware);
- ``fp32_eager``: the same with ``--fp32-eager`` (the engine's defaults);
- ``fast_fp32`` (only with ``--variants``): the fast path's switches without its reduced precision (``--amp none``:
  channels_last, the frozen old model, valid-tap ASPP, fused SGD, in fp32), the figure for a CPU whose bf16 is not
  the one to use.

``--passes`` passes (2 by default) run every configuration; the variant order is reversed on every other pass
(official, fast, fp32_eager; then fp32_eager, fast, official), so drift of a shared machine does not favour one
side. Per configuration and variant the timed iterations of all passes are pooled into one median; ratios are
official / ours (> 1: ours is faster). Peak RSS is the largest ``ru_maxrss`` over the passes. The JSON (``--out``,
rewritten after every run) holds every run's own JSON, the order, the pooled figures and the ratios; the markdown
table printed at the end (also ``--markdown-from FILE``) is ready for BENCHMARKS.md, with the date, CPU model and
flags. Nothing is fetched: the official code is read from ``--official`` (checked before anything runs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import official_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (
    {"step": 1, "batch": 4, "size": 256},
    {"step": 1, "batch": 2, "size": 512},
    {"step": 0, "batch": 2, "size": 512},
)
VARIANTS = ("official", "fast", "fp32_eager")  # the default run
ALL_VARIANTS = ("official", "fast", "fast_fp32", "fp32_eager")
OURS = ("fast", "fast_fp32", "fp32_eager")
LABELS = {"official": "official", "fast": "ours fast", "fast_fp32": "ours fast fp32", "fp32_eager": "ours fp32 eager"}


def config_key(cfg: dict) -> str:
    return f"step{cfg['step']}_{cfg['batch']}x{cfg['size']}"


def config_label(cfg: dict) -> str:
    what = "WILSON step 1" if cfg["step"] > 0 else "step 0 (BCE)"
    return f"{what}, {cfg['batch']} × {cfg['size']}²"


def parse_configs(text: str) -> tuple[dict, ...]:
    """``"1:4:256,0:2:512"`` (step:batch:size, comma-separated) -> configurations."""
    out = []
    for item in text.split(","):
        step, batch, size = (int(v) for v in item.strip().split(":"))
        out.append({"step": step, "batch": batch, "size": size})
    return tuple(out)


def command(
    variant: str,
    cfg: dict,
    official: str,
    warmup: int,
    iters: int,
    threads: int,
    python: str = sys.executable,
    abn: str = "auto",
) -> list[str]:
    """The command line of one run."""
    common = ["--size", str(cfg["size"]), "--batch", str(cfg["batch"]), "--step", str(cfg["step"])]
    common += ["--warmup", str(warmup), "--iters", str(iters), "--threads", str(threads), "--json"]
    if variant == "official":
        return [python, "-m", "benchmarks.official_step", "--official", str(official), "--abn", abn, *common]
    cmd = [python, "-m", "benchmarks.step", "--backbone", "resnet101", "--method", "wilson", *common, "--no-flops"]
    if variant == "fp32_eager":
        cmd.append("--fp32-eager")
    elif variant == "fast_fp32":
        cmd += ["--amp", "none"]
    elif variant != "fast":
        raise ValueError(f"unknown variant {variant!r}")
    return cmd


def run_order(configs=CONFIGS, variants=VARIANTS, passes: int = 2) -> list[tuple[int, dict, str]]:
    """(pass, configuration, variant) in the order they run: every configuration in every pass, the variant order
    reversed on odd passes."""
    order = []
    for p in range(passes):
        vs = tuple(variants) if p % 2 == 0 else tuple(reversed(variants))
        for cfg in configs:
            for v in vs:
                order.append((p, cfg, v))
    return order


def run_one(cmd: list[str], cwd: Path = ROOT) -> dict:
    """Run one benchmark process; its last stdout line is its JSON."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def pool(runs: list[dict]) -> dict:
    """One variant of one configuration over its passes: the median of all timed iterations pooled, each pass's
    median, and the largest peak RSS."""
    times = [t for r in runs for t in r["times_s"]]
    return {
        "median_s": statistics.median(times),
        "n": len(times),
        "times_s": times,
        "pass_medians_s": [r["median_s"] for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_runs": [r["peak_rss_mb"] for r in runs],
    }


def ratios(pooled: dict[str, dict]) -> dict:
    """official / ours for time (pooled medians) and peak RSS, per variant of ours present: > 1 means ours is faster
    (smaller)."""
    out = {}
    o = pooled.get("official")
    if o is None:
        return out
    for v in OURS:
        if v in pooled:
            out[f"official_over_{v}"] = o["median_s"] / pooled[v]["median_s"]
            out[f"rss_official_over_{v}"] = o["peak_rss_mb"] / pooled[v]["peak_rss_mb"]
    return out


def summarise(runs: list[dict], configs=CONFIGS) -> list[dict]:
    """``runs``: ``{"pass", "config", "variant", "result"}`` records -> per configuration: pooled variants, ratios."""
    out = []
    for cfg in configs:
        key = config_key(cfg)
        mine = [r for r in runs if r["config"] == key]
        pooled = {}
        for v in ALL_VARIANTS:
            results = [r["result"] for r in sorted(mine, key=lambda r: r["pass"]) if r["variant"] == v]
            if results:
                pooled[v] = pool(results)
        out.append({**cfg, "key": key, "label": config_label(cfg), "variants": pooled, **ratios(pooled)})
    return out


def machine(runs: list[dict]) -> dict:
    """CPU model, flags, torch and threads as the runs recorded them (the first official run, else the first)."""
    first = next((r["result"] for r in runs if r["variant"] == "official"), runs[0]["result"] if runs else {})
    keys = ("cpu_model", "cpu_flags", "torch", "threads", "official_commit", "abn", "amp", "norm_act")
    info = {k: first.get(k) for k in keys}
    ours = next((r["result"] for r in runs if r["variant"] == "fast"), {})
    info["fast_amp"] = ours.get("amp")
    return info


def _s(x: float) -> str:
    return f"{x:.3f}"


def _cell(p: dict | None) -> str:
    if p is None:
        return "—"
    return f"{_s(p['median_s'])} ({', '.join(f'{m:.2f}' for m in p['pass_medians_s'])})"


def markdown(doc: dict) -> str:
    """The table for BENCHMARKS.md from a ``vs_official`` JSON document (a column per variant it holds)."""
    m = doc["machine"]
    commit = (m.get("official_commit") or "")[:12] or "commit unknown"
    flags = ", ".join(m.get("cpu_flags") or []) or "none of avx2/avx512/amx"
    abn = {"standin": "pure-PyTorch in-place-ABN stand-in", "real": "inplace_abn"}.get(m.get("abn"), m.get("abn"))
    present = [v for v in ALL_VARIANTS if any(v in c["variants"] for c in doc["configs"])]
    ours = [v for v in present if v != "official"]
    lines = [
        f"{doc['date']}, {m.get('cpu_model')} (flags: {flags}), torch {m.get('torch')}, {m.get('threads')} threads. "
        f"Official: fcdl94/WILSON @ {commit}, norm layers {abn}, amp {m.get('amp')}; ours: "
        f"{', '.join(LABELS[v][5:] for v in ours)} (fast: amp {m.get('fast_amp')}). {doc['passes']} passes, each "
        f"run a fresh process ({doc['warmup']} warm-up + {doc['iters']} timed iterations), variant order reversed "
        "every other pass; median over the pooled timed iterations (each pass's median in brackets); ratio "
        "official / ours (> 1: ours faster); peak RSS = largest ru_maxrss over the passes.",
        "",
        "| configuration | "
        + " | ".join(f"{LABELS[v]} s" for v in present)
        + " | "
        + " | ".join(f"official / {LABELS[v][5:]}" for v in ours)
        + f" | peak RSS MB: {', '.join(LABELS[v].removeprefix('ours ') for v in present)} |",
        "|---|" + "---|" * (len(present) + len(ours) + 1),
    ]
    for c in doc["configs"]:
        v = c["variants"]
        rss = ", ".join(f"{v[k]['peak_rss_mb']:.0f}" if k in v else "—" for k in present)
        times = " | ".join(_cell(v.get(k)) for k in present)
        rats = " | ".join(f"{c[f'official_over_{k}']:.2f}×" if f"official_over_{k}" in c else "—" for k in ours)
        lines.append(f"| {c['label']} | {times} | {rats} | {rss} |")
    return "\n".join(lines) + "\n"


def document(runs: list[dict], a: argparse.Namespace, configs, order) -> dict:
    return {
        "benchmark": "vs_official",
        "date": _dt.date.today().isoformat(),
        "official": str(a.official),
        "passes": a.passes,
        "warmup": a.warmup,
        "iters": a.iters,
        "order": [f"pass{p}:{config_key(c)}:{v}" for p, c, v in order],
        "machine": machine(runs),
        "configs": summarise(runs, configs),
        "runs": runs,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_official", description=__doc__.split("\n\n")[0])
    p.add_argument("--official", default=None, help="path of a checkout of fcdl94/WILSON")
    p.add_argument("--out", default=None, help="JSON to write (default benchmarks/results/vs_official_<date>.json)")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", type=parse_configs, default=CONFIGS, help="step:batch:size,... (default the three)")
    p.add_argument(
        "--variants",
        type=lambda t: tuple(v.strip() for v in t.split(",")),
        default=VARIANTS,
        help=f"comma-separated, of {','.join(ALL_VARIANTS)} (default {','.join(VARIANTS)})",
    )
    p.add_argument("--abn", default="auto", choices=["auto", "real", "standin"], help="passed to official_step")
    p.add_argument("--dry-run", action="store_true", help="print the commands in run order and exit")
    p.add_argument("--markdown-from", dest="markdown_from", default=None, help="print the table of a written JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.markdown_from:
        print(markdown(json.loads(Path(a.markdown_from).read_text())), end="")
        return 0
    try:
        root = official_step.check_official(a.official)
    except official_step.OfficialCodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = [v for v in a.variants if v not in ALL_VARIANTS]
    if unknown:
        expected = ", ".join(ALL_VARIANTS)
        print(f"error: --variants: unknown {', '.join(unknown)} (expected some of {expected})", file=sys.stderr)
        return 2
    order = run_order(a.configs, a.variants, a.passes)
    cmds = [command(v, c, str(root), a.warmup, a.iters, a.threads, abn=a.abn) for _, c, v in order]
    if a.dry_run:
        for cmd in cmds:
            print(" ".join(cmd))
        return 0
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"vs_official_{_dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for (p, cfg, v), cmd in zip(order, cmds):
        print(f"[{len(runs) + 1}/{len(order)}] pass {p} {config_label(cfg)} {v}", file=sys.stderr, flush=True)
        result = run_one(cmd)
        runs.append({"pass": p, "config": config_key(cfg), "variant": v, "command": cmd, "result": result})
        out.write_text(json.dumps(document(runs, a, a.configs, order), indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    print(markdown(document(runs, a, a.configs, order)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
