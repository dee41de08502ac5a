"""Bad input: one table of user mistakes, each run through the real CLI as typed (``main([...])`` in-process, two
also as ``python -m wilson_ray`` processes): exit code 2, exactly one stderr line ``wilson-ray: error: ...`` naming
the file/field/flag and what was expected, no traceback, nothing written. ``pytest -m faults``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image
from reliability_support import (
    MANIFEST_CACHE,
    SETS,
    SPACE,
    TINY,
    child_env,
    snapshot,
)

from wilson_ray.cli import main

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------------------------
# Bad input: the table


@dataclass
class Ctx:
    """What a case builds its command from; ``empty`` must stay absent or empty, ``unchanged`` byte-identical."""

    tmp: Path
    synth_root: Path
    mp: pytest.MonkeyPatch
    empty: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)

    def data(self, damage: Callable[[Path], None] | None = None) -> Path:
        """A data root: the shared synthetic set, or a private copy of it broken by ``damage`` (watched)."""
        if damage is None:
            self.unchanged.append(self.synth_root)
            return self.synth_root
        root = self.tmp / "voc"
        shutil.copytree(self.synth_root, root, ignore=shutil.ignore_patterns(MANIFEST_CACHE))
        damage(root)
        self.unchanged.append(root)
        return root

    def train(self, *argv: str, root: Path | None = None) -> list[str]:
        out, cache = self.tmp / "out", self.tmp / "cache"
        self.empty += [out, cache]
        return [
            "train",
            "--preset",
            "demo",
            "--data-root",
            str(root or self.data()),
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            *SETS,
            *argv,
        ]

    def sweep(self, space: Path, *argv: str) -> list[str]:
        from wilson_ray.orchestration import tune_driver

        def no_cluster(address, num_cpus):
            raise AssertionError("this bad input must be refused before a Ray cluster is started")

        self.mp.setattr(tune_driver, "init_ray", no_cluster)
        storage = self.tmp / "storage"
        self.empty.append(storage)
        return ["sweep", "--space", str(space), "--storage", str(storage), "--data-root", str(self.data()), *argv]

    def space(self, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
        path = self.tmp / "space.yaml"
        if text is None:
            data = yaml.safe_load(SPACE.read_text())
            edit(data)
            text = yaml.safe_dump(data)
        path.write_text(text)
        self.unchanged.append(path)
        return path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        self.unchanged.append(path)
        return path

    def fake_cluster(self, cpus: float, gpus: float = 0.0) -> None:
        """The cluster check runs for real against a patched resource query: ``init_ray`` is replaced (no Ray
        cluster starts), ``ray.cluster_resources``/``ray.nodes`` report one node with ``cpus`` CPUs."""
        import ray

        from wilson_ray.orchestration import tune_driver

        res = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.mp.setattr(tune_driver, "init_ray", lambda address, num_cpus: False)
        self.mp.setattr(ray, "cluster_resources", lambda: dict(res, memory=1e10))
        self.mp.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": dict(res)}])


def _edit_list_line(root: Path) -> None:
    path = root / "splits" / "train_aug.txt"
    lines = path.read_text().splitlines()
    lines[2] = "/JPEGImages/nothere.jpg /SegmentationClassAug/synth_train_000002.png"
    path.write_text("\n".join(lines) + "\n")


def _truncate_jpeg(root: Path) -> None:
    path = root / "JPEGImages" / "synth_train_000005.jpg"
    path.write_bytes(path.read_bytes()[:200])


def _small_mask(root: Path) -> None:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "SegmentationClassAug" / "synth_train_000001.png")


def _mask_value_37(root: Path) -> None:
    path = root / "SegmentationClassAug" / "synth_val_000002.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 37
    Image.fromarray(mask).save(path)


def _param(key: str, spec: dict) -> Callable[[dict], None]:
    return lambda d: d["parameters"].__setitem__(key, spec)


def _other_task_checkpoint(ctx: Ctx) -> list[str]:
    """``--out`` already holds a step-0 checkpoint of 15-5; ``--task 10-10 --steps 1`` must refuse it."""
    from wilson_ray.checkpoint import save_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.protocol import get_task
    from wilson_ray.step_setup import build_model

    cfg = resolve_config("demo", overrides=TINY)
    task = get_task("15-5")
    out = ctx.tmp / "out"
    save_checkpoint(out / "step0.pt", build_model(cfg, task, 0), cfg, task, 0, {})
    argv = ctx.train("--task", "10-10", "--steps", "1")
    ctx.empty.remove(out)
    ctx.unchanged.append(out)  # only the user's own step0.pt, untouched
    return argv


def _truncated_checkpoint(ctx: Ctx) -> list[str]:
    from wilson_ray.checkpoint import save_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.protocol import get_task
    from wilson_ray.step_setup import build_model

    cfg = resolve_config("demo", overrides=TINY)
    task = get_task("15-5")
    full = save_checkpoint(ctx.tmp / "full.pt", build_model(cfg, task, 0), cfg, task, 0, {}).read_bytes()
    return ["eval", "--ckpt", str(ctx.file("half.pt", full[: len(full) // 2]))]


def _torch_file_without_tag(ctx: Ctx) -> list[str]:
    import torch

    torch.save({"model": {"w": torch.zeros(2)}}, ctx.tmp / "plain.pt")
    ctx.unchanged.append(ctx.tmp / "plain.pt")
    return ["eval", "--ckpt", str(ctx.tmp / "plain.pt")]


def _unwritable_storage(ctx: Ctx) -> list[str]:
    blocker = ctx.file("blocker", "a file, not a folder\n")
    argv = ctx.sweep(SPACE, "--no-mlflow")
    argv[argv.index("--storage") + 1] = str(blocker / "sweeps")
    return argv


def _too_many_workers(ctx: Ctx) -> list[str]:
    argv = ctx.sweep(SPACE, "--workers-per-trial", "3", "--no-mlflow")
    ctx.fake_cluster(cpus=2.0)
    return argv


def _too_many_gpus(ctx: Ctx) -> list[str]:
    argv = ctx.sweep(SPACE, "--gpus-per-worker", "1", "--no-mlflow")
    ctx.fake_cluster(cpus=8.0)
    return argv


# (id, build the argv, fragments the one error line must contain; {tmp} is the test's tmp_path)
CASES: list[tuple[str, Callable[[Ctx], list[str]], list[str]]] = [
    (
        "missing-dataset-root",
        lambda c: ["data", "check", "--root", str(c.tmp / "nope")],
        ["data root: {tmp}/nope does not exist", "expected the VOC or COCO dataset folder"],
    ),
    (
        "missing-dataset-root-train",
        lambda c: c.train(root=c.tmp / "nope"),
        ["data root: {tmp}/nope does not exist", "expected the VOC dataset folder"],
    ),
    (
        "list-line-missing-image",
        lambda c: ["data", "check", "--root", str(c.data(_edit_list_line))],
        [
            "{tmp}/voc/splits/train_aug.txt line 3",
            "JPEGImages/nothere.jpg does not exist",
            "expected every file named in the list to exist",
        ],
    ),
    (
        "list-line-missing-image-train",
        lambda c: c.train(root=c.data(_edit_list_line)),
        ["train_aug.txt line 3", "JPEGImages/nothere.jpg does not exist", "expected every file named in the list"],
    ),
    (
        "corrupt-jpeg",
        lambda c: ["data", "check", "--root", str(c.data(_truncate_jpeg))],
        ["train_aug.txt line 6", "synth_train_000005.jpg is corrupt", "expected a valid image"],
    ),
    (
        "mask-wrong-size",
        lambda c: ["data", "check", "--root", str(c.data(_small_mask))],
        ["mask {tmp}/voc/SegmentationClassAug/synth_train_000001.png is 12x10 (WxH)", "is 64x64; expected equal sizes"],
    ),
    (
        "mask-value-outside-classes",
        lambda c: ["data", "check", "--root", str(c.data(_mask_value_37))],
        ["synth_val_000002.png contains value(s) 37", "expected only 0..20 and 255"],
    ),
    ("unknown-task", lambda c: c.train("--task", "15-6"), ["task: unknown task '15-6'", "expected one of 15-5, 10-10"]),
    (
        # table checks every row's external inputs before the shared step 0 trains (it used to train step 0 first)
        "table-recall-without-replay-folder",
        lambda c: ["table", *c.train("--methods", "recall", "--set", "method.replay_root=null")[1:]],
        ["method.replay_root: not set", "expected a replay folder with one sub-folder of images per old class"],
    ),
    (
        "step-out-of-range",
        lambda c: c.train("--steps", "7"),
        ["step: got 7 for task '15-5'", "expected an integer in 0..1"],
    ),
    (
        "steps-not-a-number",
        lambda c: c.train("--steps", "last"),
        ["--steps: got 'last'", "expected comma-separated step numbers"],
    ),
    (
        "overlap-without-overlap-split",
        lambda c: c.train("--task", "offline", "--overlap"),
        ["--overlap: task 'offline' has a single step", "expected a multi-step task"],
    ),
    (
        "overlap-without-overlap-split-splits",
        lambda c: ["data", "splits", "--root", str(c.data()), "--task", "offline", "--overlap"],
        ["--overlap: task 'offline' has a single step", "expected a multi-step task"],
    ),
    (
        "space-not-yaml",
        lambda c: c.sweep(c.space(text="parameters: [unclosed\n  - {")),
        ["search space {tmp}/space.yaml: not valid YAML at line 2", "expected"],
    ),
    (
        "space-unknown-parameter",
        lambda c: c.sweep(c.space(_param("method.lambda_clss", {"distribution": "uniform", "low": 0, "high": 1}))),
        [
            "search space {tmp}/space.yaml",
            "unknown parameter 'method.lambda_clss'",
            "did you mean 'method.lambda_cls'",
            "expected a dotted key",
        ],
    ),
    (
        "space-low-above-high",
        lambda c: c.sweep(c.space(_param("method.alpha", {"distribution": "uniform", "low": 0.9, "high": 0.1}))),
        ["search space {tmp}/space.yaml", "parameter 'method.alpha': low 0.9 > high 0.1, expected low <= high"],
    ),
    (
        "space-loguniform-nonpositive",
        lambda c: c.sweep(c.space(_param("method.lambda_cls", {"distribution": "loguniform", "low": 0, "high": 1}))),
        ["search space {tmp}/space.yaml", "parameter 'method.lambda_cls': loguniform low is 0, expected low > 0"],
    ),
    (
        "space-base-key-misspelt",
        lambda c: c.sweep(c.space(lambda d: d["base"]["set"].__setitem__("incremental.epoch", 3))),
        [
            "search space {tmp}/space.yaml",
            "unknown key 'incremental.epoch' (did you mean 'epochs'?)",
            "expected a key of 'incremental'",
        ],
    ),
    (
        "preset-name-misspelt",
        lambda c: ["train", "--preset", "demoo", "--cache-dir", str(c.tmp / "cache")],
        ["--preset: unknown preset 'demoo'", "expected one of coco-voc, demo"],
    ),
    (
        "set-key-misspelt",
        lambda c: c.train("--set", "data.batchsize=2"),
        ["unknown key 'data.batchsize' (did you mean 'batch_size'?)", "expected a key of 'data'"],
    ),
    (
        "config-key-misspelt",
        lambda c: [
            "train",
            "--config",
            str(c.file("config.yaml", "data:\n  root: x\n  taks: 15-5\n")),
            "--cache-dir",
            str(c.tmp / "cache"),
        ],
        ["{tmp}/config.yaml: unknown key 'data.taks' (did you mean 'task'?)", "expected a key of 'data'"],
    ),
    (
        "checkpoint-of-another-task",
        _other_task_checkpoint,
        [
            "checkpoint {tmp}/out/step0.pt: trained on task '15-5' step 0 with 16 classes",
            "expected task '10-10' step 0 with 11 classes",
        ],
    ),
    (
        "checkpoint-missing",
        lambda c: ["eval", "--ckpt", str(c.tmp / "nope.pt")],
        ["checkpoint {tmp}/nope.pt: not found", "expected a wilson-ray checkpoint file"],
    ),
    (
        "checkpoint-garbage-bytes",
        lambda c: ["eval", "--ckpt", str(c.file("junk.pt", b"this is not a checkpoint"))],
        ["checkpoint {tmp}/junk.pt: not a readable weights-only checkpoint", "expected a file written by wilson-ray"],
    ),
    (
        "checkpoint-truncated",
        _truncated_checkpoint,
        [
            "checkpoint {tmp}/half.pt: not a readable weights-only checkpoint",
            "zip archive",
            "expected a file written by wilson-ray",
        ],
    ),
    (
        "checkpoint-without-format-tag",
        _torch_file_without_tag,
        ["checkpoint {tmp}/plain.pt: not a wilson-ray checkpoint", "expected a step checkpoint written by wilson-ray"],
    ),
    (
        "storage-not-writable",
        _unwritable_storage,
        ["--storage: {tmp}/blocker/sweeps is not a writable folder", "expected a folder this user can create files in"],
    ),
    (
        "more-workers-than-cluster",
        _too_many_workers,
        [
            "--workers-per-trial 3 x 1 CPUs: a trial needs 3 CPUs, but the Ray cluster has 2",
            "expected at most 2 workers per trial",
        ],
    ),
    (
        "more-gpus-than-cluster",
        _too_many_gpus,
        [
            "--gpus-per-worker 1 x --workers-per-trial 2: a trial needs 2 GPUs",
            "the Ray cluster has 0 GPUs",
            "expected fewer workers or --gpus-per-worker 0",
        ],
    ),
    (
        "tracking-uri-unknown-scheme",
        lambda c: c.sweep(SPACE, "--tracking-uri", "ftp://example.org/mlflow"),
        ["--tracking-uri: 'ftp://example.org/mlflow' has unknown scheme 'ftp'", "expected one of sqlite:"],
    ),
]


@pytest.mark.parametrize("build, fragments", [pytest.param(b, f, id=i) for i, b, f in CASES])
def test_bad_input_one_line_exit_2_nothing_written(build, fragments, synth_root, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path, synth_root, monkeypatch)
    argv = build(ctx)
    before = {p: snapshot(p) for p in ctx.unchanged}
    capsys.readouterr()

    code = main(argv)
    out = capsys.readouterr()

    lines = out.err.splitlines()
    assert code == 2, out.err
    assert len(lines) == 1 and lines[0].startswith("wilson-ray: error: "), out.err
    assert "Traceback" not in out.err + out.out and out.out == ""
    for fragment in fragments:
        assert fragment.format(tmp=tmp_path) in lines[0], lines[0]
    for path in ctx.empty:
        assert not path.exists() or not any(path.iterdir()), f"{path} was written: {list(path.rglob('*'))}"
    for path, files in before.items():
        assert snapshot(path) == files, f"{path} changed"


def test_table_covers_at_least_18_cases():
    assert len(CASES) >= 18 and len({c[0] for c in CASES}) == len(CASES)


def test_corrupt_image_found_while_training_is_one_error_line(synth_root, tmp_path, monkeypatch, capsys):
    """An image that only breaks when a data-loader worker decodes it (``data check`` finds it up front): the error
    is the reader's one line, not the worker's traceback (torch re-raises it wrapped), and no entry or --out is
    written. The step-cache notice printed when training started stays above it; the lock file stays."""
    ctx = Ctx(tmp_path, synth_root, monkeypatch)
    root = ctx.data(
        lambda r: [
            (r / "JPEGImages" / p.name).write_bytes(p.read_bytes()[:200])
            for p in (r / "JPEGImages").glob("synth_train_*.jpg")
        ]
    )
    code = main(ctx.train("--set", "data.num_workers=1", root=root))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert lines[0].startswith("cache: training step 0") and len(lines) == 2, err
    assert lines[1].startswith(f"wilson-ray: error: {root}/splits/train_aug.txt line ")
    assert "is unreadable or corrupt" in lines[1] and "expected a valid image" in lines[1]
    assert not (tmp_path / "out").exists()
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_bad_input_as_a_process_exit_2_no_traceback(tmp_path):
    """``python -m wilson_ray train --steps 1,x`` (a ValueError traceback before the fix). The pickled-checkpoint
    test below is the second process-level case."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wilson_ray",
            "train",
            "--preset",
            "demo",
            "--steps",
            "1,x",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wilson-ray: error: --steps: got '1,x', expected"), proc.stderr
    assert not (tmp_path / "cache").exists()
