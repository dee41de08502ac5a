"""The step-0 cache across processes: two processes asking for the same missing checkpoint train it once; a process
killed while writing the entry leaves nothing a later call accepts, the lock is free, and the next call trains it
again. ``pytest -m faults``."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_support import (
    SLOW,
    TINY,
    child_env,
    sigkill,
    wait_for,
)

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------------------------
# Step-0 cache: concurrency and kills


CACHE_CHILD = (
    SLOW
    + r"""
import json
from wilson_ray import engine
from wilson_ray.cache import cached_step
from wilson_ray.config import resolve_config

cache, overrides, me = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
real_train_step = engine.train_step
def counting_train_step(*args, **kwargs):
    with open("train_calls.log", "a") as fh:
        fh.write(me + "\n")
    return real_train_step(*args, **kwargs)
engine.train_step = counting_train_step
if me == "slow":
    patch_torch_save()
cfg = resolve_config("demo", overrides=overrides)
Path(f"ready-{me}").touch()
deadline = time.time() + 120
while len(list(Path(".").glob("ready-*"))) < int(os.environ.get("BARRIER", "1")) and time.time() < deadline:
    time.sleep(0.01)   # both processes ask at the same moment
print(json.dumps({"path": str(cached_step(cfg, 0, cache))}))
"""
)


def _cache_cfg(root: Path) -> dict:
    return {**TINY, "data.root": str(root), "step0.max_iters_per_epoch": 1, "incremental.max_iters_per_epoch": 1}


@pytest.mark.timeout(300)
def test_two_processes_train_a_missing_step0_once(synth_root, tmp_path):
    from wilson_ray.checkpoint import load_checkpoint

    cache = tmp_path / "cache"
    overrides = json.dumps(_cache_cfg(synth_root))
    env = {**child_env(tmp_path), "BARRIER": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_CHILD, str(cache), overrides, me],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for me in ("a", "b")
    ]
    results = [p.communicate(timeout=280) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    paths = {json.loads(out.strip().splitlines()[-1])["path"] for out, _ in results}
    assert len(paths) == 1  # both got the same entry
    notices = sum(err.count("cache: training step 0") for _, err in results)
    calls = (tmp_path / "train_calls.log").read_text().split()
    assert notices == 1 and len(calls) == 1, (notices, calls)  # trained exactly once
    (path,) = paths
    assert load_checkpoint(path)["step"] == 0
    assert [p.name for p in cache.glob("*/step0.pt")] == ["step0.pt"]
    assert not list(cache.glob("*/.train-*"))


@pytest.mark.timeout(300)
def test_cache_writer_killed_leaves_no_valid_entry_and_next_call_retrains(synth_root, tmp_path, capsys):
    from wilson_ray.cache import cached_step, valid_entry
    from wilson_ray.checkpoint import load_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.step_key import step_key

    cache = tmp_path / "cache"
    overrides = _cache_cfg(synth_root)
    proc = subprocess.Popen(
        [sys.executable, "-c", CACHE_CHILD, str(cache), json.dumps(overrides), "slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc, timeout=240)
    cfg = resolve_config("demo", overrides=overrides)
    key = step_key(cfg, 0)
    (partial,) = cache.glob(f"{key}/.train-*/.step0.pt.*.tmp")  # killed inside the checkpoint write
    sigkill(proc)

    entry = cache / key / "step0.pt"
    assert not entry.exists()  # no entry, not a truncated one
    with open(cache / f"{key}.lock", "a+") as fh:  # the dead writer's lock is free
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    # Even a half-written file at the entry's name (a non-atomic copy, an older writer) is not taken as valid:
    shutil.copyfile(partial, entry)
    assert not valid_entry(entry)

    capsys.readouterr()
    path = cached_step(cfg, 0, cache)
    err = capsys.readouterr().err
    assert path == entry and "ignoring incomplete entry" in err and "cache: training step 0" in err
    assert valid_entry(entry) and load_checkpoint(entry)["step"] == 0
    assert not list(cache.glob(f"{key}/.train-*"))  # the killed writer's temporary folder is gone
    assert cached_step(cfg, 0, cache) == entry and "training" not in capsys.readouterr().err  # now reused


def test_step_cache_key_same_for_relative_and_absolute_data_root(tmp_path, monkeypatch):
    """One dataset reached as ``data/x`` or as its absolute path is one cache entry; another folder is another."""
    from wilson_ray.config import resolve_config
    from wilson_ray.step_key import step_key

    for name in ("x", "y"):
        (tmp_path / "data" / name / "splits").mkdir(parents=True)
        (tmp_path / "data" / name / "splits" / "train_aug.txt").write_text(f"{name}\n")
    monkeypatch.chdir(tmp_path)
    rel = resolve_config("demo", overrides={"data.root": "data/x"})
    absolute = resolve_config("demo", overrides={"data.root": str(tmp_path / "data" / "x")})
    other = resolve_config("demo", overrides={"data.root": "data/y"})
    assert step_key(rel, 0) == step_key(absolute, 0) and step_key(rel, 1) == step_key(absolute, 1)
    assert step_key(rel, 0) != step_key(other, 0)
