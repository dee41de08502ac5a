import pickle

import pytest
import torch
from spies import EpochSpy

from tests.methods.test_methods import TINY
from wilson_ray.checkpoint import check_checkpoint_matches, load_checkpoint
from wilson_ray.config import resolve_config
from wilson_ray.engine import NonFiniteLossError, train_step
from wilson_ray.errors import UserError
from wilson_ray.protocol import get_task
from wilson_ray.step_setup import lr_factor, model_from_checkpoint


class Payload:
    """An arbitrary Python object: weights_only loading must refuse to unpickle it."""


def _cfg(root, **extra):
    return resolve_config("demo", overrides={**TINY, "data.root": str(root), **extra})


def test_lr_policies():
    # poly: (1 - it/max)^0.9 every iteration
    assert lr_factor(0, 100, "poly", 0.9, 0) == 1.0
    assert lr_factor(50, 100, "poly", 0.9, 0) == pytest.approx(0.5**0.9)
    # warmup: constant for 5 epochs, then poly on the global count -> jump to (35/40)^0.9 at epoch 5 of 40
    its = 10
    assert lr_factor(5 * its - 1, 40 * its, "warmup", 0.9, 5 * its) == 1.0
    assert lr_factor(5 * its, 40 * its, "warmup", 0.9, 5 * its) == pytest.approx((35 / 40) ** 0.9)
    assert (35 / 40) ** 0.9 == pytest.approx(0.887, abs=1e-3)


def test_checkpoint_round_trip_and_refusal(synth_root, tmp_path):
    cfg = _cfg(synth_root)
    result = train_step(cfg, 0, out_dir=tmp_path)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["task"] == "15-5" and ckpt["step"] == 0 and len(ckpt["class_names"]) == 16
    assert ckpt["metrics"]["miou_all"] == pytest.approx(result.metrics["miou_all"])
    model, _ = model_from_checkpoint(result.checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    # refused for another task / step with a one-line message
    with pytest.raises(UserError, match=r"trained on task '15-5' step 0 with 16 classes, expected task '10-10'"):
        check_checkpoint_matches(ckpt, result.checkpoint, get_task("10-10"), 0)
    with pytest.raises(UserError, match="expected task '10-10' step 0 with 11 classes"):
        train_step(_cfg(synth_root, **{"data.task": "10-10"}), 1, init_checkpoint=result.checkpoint)
    # not a checkpoint: garbage bytes, and a pickled object payload refused by weights_only=True
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: not a readable weights-only checkpoint"):
        load_checkpoint(junk)

    evil = tmp_path / "evil.pt"
    torch.save({"format": "wilson-ray-checkpoint", "obj": Payload()}, evil, pickle_module=pickle)
    with pytest.raises(UserError, match="evil.pt: not a readable weights-only checkpoint"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(UserError, match="not a wilson-ray checkpoint"):
        load_checkpoint(plain)


def test_resume_continues_from_saved_epoch(synth_root, tmp_path):
    cfg = _cfg(synth_root, **{"step0.epochs": 2})
    saved = {}

    class Save:
        def on_epoch_end(self, epoch, metrics, save_state):
            if epoch == 1:
                saved["path"] = save_state(tmp_path / "state")

        def on_step_end(self, result):
            pass

    train_step(cfg, 0, callbacks=[Save()])
    spy = EpochSpy()
    train_step(cfg, 0, resume_from=saved["path"], callbacks=[spy])
    assert spy.epochs == [2]


def test_nonfinite_loss_stops_with_reason(synth_root):
    cfg = _cfg(synth_root, **{"step0.lr": 1e30, "step0.epochs": 3, "run.log_interval": 1})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0 epoch \d"):
        train_step(cfg, 0)


def test_seeded_runs_are_deterministic(synth_root):
    cfg = _cfg(synth_root)
    a = train_step(cfg, 0)
    b = train_step(cfg, 0)
    assert a.metrics["loss/total"] == b.metrics["loss/total"]
    assert (a.confusion == b.confusion).all()


def test_fast_path_switches_train_both_steps(synth_root, tmp_path):
    """Every run.* fast-path switch on (config.FAST_PATH): step 0 and a WILSON step 1 train with finite losses,
    and the checkpoints hold the same keys as the default path's (the switches never rename parameters)."""
    from wilson_ray.config import FAST_PATH

    fast_cfg = _cfg(synth_root, **FAST_PATH)
    plain_cfg = _cfg(synth_root)
    r0 = train_step(fast_cfg, 0, out_dir=tmp_path / "fast")
    r1 = train_step(fast_cfg, 1, init_checkpoint=r0.checkpoint, out_dir=tmp_path / "fast")
    p0 = train_step(plain_cfg, 0, out_dir=tmp_path / "plain")
    for r in (r0, r1):
        assert torch.isfinite(torch.tensor(r.metrics["loss/total"]))
        assert 0.0 <= r.metrics["miou_all"] <= 100.0
    fast_keys = set(load_checkpoint(r0.checkpoint)["model"])
    assert fast_keys == set(load_checkpoint(p0.checkpoint)["model"])
    step1 = load_checkpoint(r1.checkpoint)["model"]
    assert fast_keys < set(step1) and all(v.dtype == torch.float32 for v in step1.values() if v.is_floating_point())


def test_bare_cuda_device_gets_the_local_index(monkeypatch):
    """`run.device: cuda` must name an index: torch.cuda.set_device(torch.device('cuda')) raises (seen on an H200)."""
    from wilson_ray import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert runtime.resolve_device("cuda") == torch.device("cuda", 1)
    assert runtime.resolve_device("auto") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_training_does_not_depend_on_whether_the_before_training_pass_ran(synth_root, tmp_path, monkeypatch):
    """A method's pass over the training data (PLOP's thresholds, RECALL's labels) is computed once and then read
    from the pass cache; the step that computes it and the step that reads it must train on the same batches. A pass
    that consumed the training loader (its first shuffle, the global RNG of the crops) changed the run."""
    from wilson_ray import methods
    from wilson_ray.methods.finetune import Finetune

    step0 = train_step(_cfg(synth_root), 0, out_dir=tmp_path / "s0").checkpoint
    cfg = resolve_config("demo", method="finetune", overrides={**TINY, "data.root": str(synth_root)})

    def first_batches(reads_the_data: bool) -> list[float]:
        seen: list[float] = []

        class Probe(Finetune):
            def before_training(self, ctx, loader):
                if reads_the_data:  # a pass computed now reads every batch (the cached one reads nothing)
                    assert sum(1 for _ in loader) > 0

            def losses(self, ctx, batch, epoch):
                seen.append(float(batch.images.double().sum()))
                return super().losses(ctx, batch, epoch)

        monkeypatch.setitem(methods.METHODS, "finetune", Probe)
        result = train_step(cfg, 1, init_checkpoint=step0, out_dir=tmp_path / f"s1-{reads_the_data}")
        return seen + [result.metrics["miou_all"]]

    computed, cached = first_batches(True), first_batches(False)
    assert len(computed) > 2 and computed == cached
