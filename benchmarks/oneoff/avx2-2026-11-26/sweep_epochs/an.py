import collections
import glob
import json
import os
import sys
from pathlib import Path


def load(st):
    snaps = [json.loads(l) for l in open(st / "cpu.jsonl")]
    if (st / "train.log").exists():
        ts = [
            float(l.split(b" ", 1)[0])
            for l in open(st / "train.log", "rb").read().split(b"\n")
            if b"step 1 epoch" in l and l[:1].isdigit()
        ]
    elif (st / "plain.json").exists():
        ts = json.loads(open(st / "plain.json").read().strip().splitlines()[-1])["epoch_ts"]
    else:
        d = glob.glob(str(st / "*/trials/*"))[0]
        ts = sorted(os.stat(p).st_mtime for p in glob.glob(d + "/epochs/*.json"))
    return snaps, ts


def interp(snaps, t, pid):
    # cpu of pid at time t (linear between samples; 0 before first seen)
    prev = None
    for s in snaps:
        if s["t"] >= t:
            c1 = s["p"].get(pid, [None])[0]
            c0 = prev["p"].get(pid, [0])[0] if prev else 0.0
            if c1 is None:
                return c0
            if prev is None:
                return c1
            f = (t - prev["t"]) / (s["t"] - prev["t"])
            return c0 + f * (c1 - c0)
        prev = s
    return prev["p"].get(pid, [0])[0]


def cat(cmd):
    for pat, name in [
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
        ("dashboard.py", "dashboard"),
        ("dashboard/agent", "dash_agent"),
        ("runtime_env/agent", "renv_agent"),
        ("log_monitor", "log_monitor"),
        ("monitor.py", "monitor"),
        ("wilson_ray sweep", "driver"),
        ("plain_epochs", "plain"),
        ("cpusample", "sampler"),
        ("default_worker", "ray_worker"),
        ("ray::", "ray_worker"),
    ]:
        if pat in cmd:
            return name
    return "other:" + cmd[:40]


for name in sys.argv[1:]:
    st = Path(name)
    snaps, ts = load(st)
    a, b = ts[1], ts[-1]
    n = len(ts) - 2
    wall = b - a
    pids = set().union(*[s["p"].keys() for s in snaps])
    info = {}
    for s in snaps:
        for pid, v in s["p"].items():
            info[pid] = v
    d = {pid: interp(snaps, b, pid) - interp(snaps, a, pid) for pid in pids}
    main = max(d, key=d.get)
    tot = collections.Counter()
    for pid, v in d.items():
        if v < 0.05:
            continue
        if pid == main:
            k = "MAIN"
        elif info[pid][3] == int(main):
            k = "main_child"
        else:
            k = cat(info[pid][2]) + f"(n{info[pid][1]})"
        tot[k] += v
    gaps = [round(y - x, 2) for x, y in zip(ts, ts[1:])]
    print(f"{name}: {n} epochs, mean {wall / n:.3f} s/epoch, main nice {info[main][1]}; gaps {gaps}")
    print(
        "   per epoch CPU-s: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in tot.most_common())
        + f"; total {sum(tot.values()) / wall:.2f} cores"
    )
