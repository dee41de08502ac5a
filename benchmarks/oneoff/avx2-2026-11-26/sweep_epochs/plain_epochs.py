"""Plain in-process step with per-epoch wall times (and optionally save_state each epoch like the sweep)."""

import json
import shutil
import sys
import tempfile
import time

T0 = time.time()
import os
from pathlib import Path

import torch

if os.environ.get("SET_THREADS"):
    torch.set_num_threads(int(os.environ["SET_THREADS"]))
from wilson_ray import engine
from wilson_ray.cache import previous_step_checkpoint
from wilson_ray.config import resolve_config

cfg_path, cache = sys.argv[1], sys.argv[2]
save = len(sys.argv) > 3 and sys.argv[3] == "save"
cfg = resolve_config(config_file=cfg_path)
init = previous_step_checkpoint(cfg, 1, Path(cache))
ts = []


class CB(engine.Callback):
    def on_epoch_end(self, epoch, metrics, save_state):
        if save:
            tmp = tempfile.mkdtemp()
            save_state(Path(tmp))
            shutil.rmtree(tmp)
        ts.append(time.time())


t1 = time.time()
out = tempfile.mkdtemp()
engine.train_step(cfg, 1, init_checkpoint=init, out_dir=Path(out), callbacks=[CB()])
t2 = time.time()
print(
    json.dumps(
        {
            "imports_s": round(t1 - T0, 2),
            "to_first_epoch_s": round(ts[0] - t1, 2),
            "epochs": [round(b - a, 2) for a, b in zip(ts, ts[1:])],
            "after_last_s": round(t2 - ts[-1], 2),
            "epoch_ts": ts,
            "mean_gap": round((ts[-1] - ts[0]) / (len(ts) - 1), 3),
        }
    )
)
