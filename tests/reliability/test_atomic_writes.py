"""Atomic writes: a writer SIGKILLed in the middle of a write (the generic helper, the real checkpoint save, the
best-config export, the synthetic generator, the manifest cache) leaves the previous good file or none, never a
truncated one. ``pytest -m faults``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reliability_support import (
    SLOW,
    TINY,
    sigkill,
    snapshot,
    spawn,
    wait_for,
)

from wilson_ray.cli import main

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes: SIGKILL in the middle of a write


@pytest.mark.parametrize("previous", [True, False], ids=["previous-file", "no-file"])
def test_atomic_write_killed_mid_write(previous, tmp_path):
    from wilson_ray.atomic import atomic_write_bytes

    target = tmp_path / "out" / "big.bin"
    good = b"previous good content\n" * 1000
    if previous:
        atomic_write_bytes(target, good)
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
from wilson_ray.atomic import atomic_write
atomic_write(sys.argv[1], lambda tmp: slow_write(open(tmp, "wb"), b"n" * (8 << 20)))
""",
        str(target),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    (partial,) = target.parent.glob(".big.bin.*.tmp")
    assert partial.stat().st_size == 4 << 20  # the kill lands in the middle of the write
    sigkill(proc)
    if previous:
        assert target.read_bytes() == good
    else:
        assert not target.exists()


def test_atomic_write_gives_usual_permissions(tmp_path):
    from wilson_ray.atomic import atomic_write_text, current_umask

    fresh = atomic_write_text(tmp_path / "fresh.txt", "x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "new"


def test_checkpoint_save_killed_mid_write_keeps_previous(tmp_path):
    from wilson_ray.checkpoint import load_checkpoint
    from wilson_ray.step_setup import model_from_checkpoint

    target = tmp_path / "run" / "step0.pt"
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
import json
import torch
from wilson_ray.config import resolve_config
from wilson_ray.checkpoint import save_checkpoint
from wilson_ray.step_setup import build_model
from wilson_ray.protocol import get_task
cfg = resolve_config("demo", overrides=json.loads(sys.argv[2]))
task = get_task("15-5")
model = build_model(cfg, task, 0)
save_checkpoint(Path(sys.argv[1]), model, cfg, task, 0, {"miou_all": 1.0})   # the previous good checkpoint
Path("saved").touch()
patch_torch_save()
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
save_checkpoint(Path(sys.argv[1]), model, cfg, task, 0, {"miou_all": 2.0})   # killed in the middle
""",
        str(target),
        json.dumps(TINY),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    assert list(target.parent.glob(".step0.pt.*.tmp"))
    sigkill(proc)
    ckpt = load_checkpoint(target)
    assert ckpt["metrics"]["miou_all"] == 1.0
    model, _ = model_from_checkpoint(target)
    assert all(np.isfinite(v.numpy()).all() for v in model.state_dict().values() if v.is_floating_point())


def _fake_sweep(storage: Path, name: str, alpha: float, miou: float) -> None:
    from wilson_ray.config import resolve_config
    from wilson_ray.orchestration.results import write_sweep
    from wilson_ray.sweep_record import TrialRecord

    write_sweep(storage, name, {"name": name, "metric": "miou_all", "mode": "max", "step": 1})
    cfg = resolve_config("demo", overrides={"method.alpha": alpha}).to_dict()
    rec = TrialRecord(storage / name / "trials" / f"t{alpha}")
    rec.write_trial(f"t{alpha}", f"trial_{alpha}", {"method.alpha": alpha}, cfg, 1, name)
    rec.record_epoch(1, {"epoch": 1, "miou_all": miou, "miou_old": miou, "miou_new": miou})
    rec.set_outcome("completed")


def test_best_config_export_killed_mid_write_keeps_previous(tmp_path, capsys):
    from wilson_ray.config import resolve_config

    storage, out = tmp_path / "sweeps", tmp_path / "best.yaml"
    _fake_sweep(storage, "sw", alpha=0.3, miou=10.0)
    assert main(["best", "--storage", str(storage), "--name", "sw", "--out", str(out)]) == 0
    good = out.read_text()
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.3
    _fake_sweep(storage, "sw", alpha=0.7, miou=20.0)  # a better trial: the next export rewrites best.yaml
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
patch_write_text()
from wilson_ray.orchestration.results import export_best   # what `wilson-ray best` calls (without importing torch)
export_best(sys.argv[1], "sw", sys.argv[2])
""",
        str(storage),
        str(out),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    (partial,) = tmp_path.glob(".best.yaml.*.tmp")  # the kill lands while the new best.yaml is half written
    assert 0 < partial.stat().st_size
    sigkill(proc)
    assert out.read_text() == good
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.3
    capsys.readouterr()
    assert main(["best", "--storage", str(storage), "--name", "sw", "--out", str(out)]) == 0  # the rerun finishes
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.7


@pytest.mark.parametrize("previous", [True, False], ids=["previous-dataset", "no-dataset"])
def test_synthetic_generation_killed_leaves_previous_or_nothing(previous, tmp_path):
    from wilson_ray.data import synthetic, voc

    out = tmp_path / "synthetic"
    if previous:
        synthetic.generate(out, seed=1, train=20, val=6, size=48)
    before = snapshot(out)
    # what `wilson-ray data synth --out OUT --train 600 --val 100 --size 64 --force` calls
    proc = spawn(
        tmp_path,
        "import sys\nfrom wilson_ray.data import synthetic\n"
        "synthetic.generate(sys.argv[1], seed=0, train=600, val=100, size=64, force=True)\n",
        str(out),
    )
    wait_for(lambda: any(len(list(d.glob("JPEGImages/*.jpg"))) >= 20 for d in tmp_path.glob(".synthetic.*.tmp")), proc)
    sigkill(proc)
    if previous:
        assert snapshot(out) == before
        report = voc.check_voc(out, full=True)
        assert report["splits"]["train"]["count"] == 20 and report["splits"]["val"]["count"] == 6
    else:
        assert not out.exists()


def test_damaged_manifest_cache_is_rebuilt_not_trusted(synth_copy):
    from wilson_ray.data import voc

    first = voc.voc_manifest(synth_copy, "train")
    cache = first.cache_path
    assert cache is not None and cache.is_file()
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # as if a non-atomic writer was killed
    again = voc.voc_manifest(synth_copy, "train")
    assert not again.from_cache and np.array_equal(again.presence(), first.presence())
    assert voc.voc_manifest(synth_copy, "train").from_cache  # rewritten whole
