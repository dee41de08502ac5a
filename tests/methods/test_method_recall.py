"""RECALL (baselines.md §3): the replay folder's validation (library and CLI: one line, exit 2), the synthetic
replay images, offline labelling by the old model (restricted or not), batch mixing and the frozen encoder."""

import pytest
import torch

from tests.methods.test_methods import TINY
from wilson_ray.cli import main
from wilson_ray.config import resolve_config
from wilson_ray.data import synthetic
from wilson_ray.data.replay import replay_listing
from wilson_ray.errors import UserError
from wilson_ray.methods.base import Batch, Context, Trainable
from wilson_ray.methods.recall import RECALL, RECALLParams
from wilson_ray.models.segmenter import ModelOutput, build_segmenter
from wilson_ray.protocol import VOC_CLASSES, get_task

OLD = list(VOC_CLASSES[1:16])


def test_synthetic_replay_folder_has_every_class_unlabelled(synth_root):
    replay = synth_root / synthetic.REPLAY_DIR
    assert sorted(p.name for p in replay.iterdir()) == sorted(VOC_CLASSES[1:])
    assert all(len(list((replay / c).glob("*.jpg"))) == 2 for c in VOC_CLASSES[1:])
    assert not list(replay.rglob("*.png"))  # no masks: web images come unlabelled
    listing = replay_listing(replay, OLD, per_class=1)
    assert [c for c, _ in listing] == list(range(1, 16))


def test_broken_replay_folders_are_one_line_errors(synth_copy):
    replay = synth_copy / "replay"
    with pytest.raises(UserError, match="not set"):
        replay_listing(None, OLD)
    with pytest.raises(UserError, match="not found"):
        replay_listing(synth_copy / "nope", OLD)
    (replay / "cat" / "replay_0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="unreadable"):
        replay_listing(replay, OLD)
    for p in (replay / "bus").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="no images"):
        replay_listing(replay, OLD)
    (replay / "bus").rmdir()
    with pytest.raises(UserError, match="no folder for old class 'bus'"):
        replay_listing(replay, OLD)


@pytest.mark.parametrize("extra", [[], ["--replay-root", "/nonexistent/replay"]])
def test_cli_train_recall_without_a_replay_folder_exits_2(extra, synth_root, tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "demo",
        "--method",
        "recall",
        "--data-root",
        str(synth_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        *[f"--set={k}={v}" for k, v in TINY.items()],
        *extra,
    ]
    if not extra:
        args += ["--set=method.replay_root=null"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.replay_root" in err[0]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*/step0.pt"))  # nothing trained


class _FixedOld(torch.nn.Module):
    """An "old model" whose argmax is class 3 on the left half and background on the right half."""

    def forward(self, x, upsample=True, maps=False):
        s = torch.zeros(x.shape[0], 16, *x.shape[-2:])
        s[:, 3, :, : x.shape[-1] // 2] = 5.0
        s[:, 0, :, x.shape[-1] // 2 :] = 5.0
        s[:, 7] = 4.0  # second everywhere
        return ModelOutput(s, x)


def _recall(root, restrict=False, ratio=1.0):
    task = get_task("15-5")
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    params = RECALLParams(replay_root=str(root), replay_per_class=1, replay_ratio=ratio, restrict_labels=restrict)
    method = RECALL(params, task, 1)
    method.on_model_ready(model)
    module = Trainable(model)
    ctx = Context(net=module, module=module, old_model=_FixedOld())
    return method, ctx, module


def test_replay_images_are_labelled_by_the_old_model(synth_root):
    method, ctx, _ = _recall(synth_root / "replay")
    batch = Batch(torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long), torch.zeros(2, 20))
    method.before_training(ctx, [batch])
    assert method.labels.shape == (15, 16, 16) and method.labels.dtype == torch.uint8
    assert (method.labels[:, :, :8] == 3).all() and (method.labels[:, :, 8:] == 0).all()
    # restricted to {background, the folder's class}: class 3 is not "aeroplane", so the left half is background
    method, ctx, _ = _recall(synth_root / "replay", restrict=True)
    method.before_training(ctx, [batch])
    assert (method.labels[0] == 0).all() and (method.labels[2, :, :8] == 3).all()  # folder 3 (bird) keeps it


def test_batches_mix_replay_and_inpainted_new_images_and_the_encoder_stays_frozen(synth_root):
    method, ctx, module = _recall(synth_root / "replay", ratio=1.5)
    images = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, :2] = 17
    batch = Batch(images, masks, torch.zeros(2, 20))
    method.before_training(ctx, [batch])
    seen = {}
    real = module.forward

    def spy(x, **kw):
        seen["n"] = x.shape[0]
        return real(x, **kw)

    module.forward = spy
    groups = method.param_groups(module, resolve_config("demo", method="recall").optim(1))
    assert [g["name"] for g in groups] == ["head"]
    assert not any(p.requires_grad for p in module.model.backbone.parameters())
    before = [p.clone() for p in module.model.backbone.parameters()]
    bn = module.model.backbone.bn1
    stats = bn.running_mean.clone()
    loss = method.losses(ctx, batch, 0)["ce"]
    loss.backward()
    assert seen["n"] == 2 + 3  # round(1.5 × 2) replay images joined the batch
    assert torch.isfinite(loss) and all(p.grad is None for p in module.model.backbone.parameters())
    assert torch.equal(bn.running_mean, stats) and all(
        torch.equal(a, b) for a, b in zip(before, module.model.backbone.parameters())
    )
    assert method.cursor == 3


def test_recall_search_space_loads_with_the_published_defaults_first():
    from pathlib import Path

    from wilson_ray.orchestration.search_space import load_search_space

    space = load_search_space(Path(__file__).resolve().parents[2] / "search_spaces" / "recall.yaml")
    assert space.base_config().method.name == "recall" and len(space.params) >= 4


def test_synthetic_replay_images_are_deterministic(tmp_path):
    import hashlib

    for name in ("a", "b"):
        synthetic.generate(tmp_path / name, seed=1, train=5, val=5, size=32, replay=1)
    digest = lambda root: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "replay").rglob("*.jpg"))]  # noqa: E731
    assert digest(tmp_path / "a") == digest(tmp_path / "b") and len(digest(tmp_path / "a")) == 20
