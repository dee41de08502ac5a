"""A tiny end-to-end run of every method on a few synthetic images, plus per-method behaviour checks."""

import math

import pytest
import torch
from spies import EpochSpy

from wilson_ray.config import resolve_config
from wilson_ray.engine import train_step
from wilson_ray.methods import METHODS
from wilson_ray.methods.base import Batch, Context, Trainable
from wilson_ray.methods.ce_step0 import CEStepZero
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.protocol import get_task

TINY = {
    "step0.epochs": 1,
    "incremental.epochs": 2,
    "data.batch_size": 4,
    "data.val_batch_size": 10,
    "data.crop_size": 64,
    "data.val_crop_size": 64,
    "data.num_workers": 0,
    "run.progress": False,
    "step0.max_iters_per_epoch": 2,
    "incremental.max_iters_per_epoch": 2,
    "run.val_interval": 1,
    "model.small_width": 8,
    "model.head_channels": 16,
}


_LEARNER = {
    "method.epochs": 1,
    "method.max_iters_per_epoch": 2,
    "method.batch_size": 4,
    "method.crop_size": 32,
    "method.scales": [1.0],
    "method.flip": False,
}
WEAK_TINY = {
    "cam": _LEARNER,
    "eps": _LEARNER,
    "seam": {**_LEARNER, "method.aff_epochs": 1, "method.aff_crop_size": 32, "method.aff_batch_size": 4},
    "ss": {**_LEARNER, "method.pretrain_epochs": 0, "method.pamr_iterations": 2},
}


@pytest.fixture(scope="module")
def step0_ckpt(synth_root, tmp_path_factory):
    cfg = resolve_config("demo", overrides={**TINY, "data.root": str(synth_root)})
    out = tmp_path_factory.mktemp("step0")
    return train_step(cfg, 0, out_dir=out).checkpoint


@pytest.fixture(scope="module")
def step0_ce_ckpt(synth_root, tmp_path_factory):
    """The softmax-CE step 0 of PLOP and SDR (with SDR's prototype bank)."""
    cfg = resolve_config("demo", method="plop", overrides={**TINY, "data.root": str(synth_root)})
    return train_step(cfg, 0, out_dir=tmp_path_factory.mktemp("step0ce")).checkpoint


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_a_step(method, synth_root, step0_ckpt, step0_ce_ckpt, tmp_path):
    overrides = {**TINY, "data.root": str(synth_root)}
    if method in ("wilson", "cam_online"):
        overrides["method.pseudo_epochs"] = 1  # one localizer-only epoch, then the full loss
    if method in WEAK_TINY:  # an image-label row: a tiny learner makes its pseudo-masks first
        overrides.update(WEAK_TINY[method])
    if method == "recall":
        overrides["method.replay_root"] = str(synth_root / "replay")
    if METHODS[method].step0 is CEStepZero:
        step0_ckpt = step0_ce_ckpt
    cfg = resolve_config("demo", method=method, overrides=overrides)
    joint = METHODS[method].step0 is None  # the joint bound trains its own single step
    spy = EpochSpy()
    seen = spy.metrics

    step = 0 if joint else 1
    result = train_step(cfg, step, init_checkpoint=None if joint else step0_ckpt, out_dir=tmp_path, callbacks=[spy])
    assert result.checkpoint.is_file()
    epochs = 1 if joint else 2
    assert [m["epoch"] for m in seen] == list(range(1, epochs + 1))
    assert all(math.isfinite(m["loss/total"]) for m in seen)
    assert 0.0 <= result.metrics["miou_all"] <= 100.0
    assert len(result.per_class_iou) == 21  # background + 20 classes at the last step of 15-5
    if method == "wilson":
        assert set(k for k in seen[0] if k.startswith("loss/")) == {"loss/cls", "loss/loc", "loss/enc", "loss/total"}
        assert {"loss/seg", "loss/sss"} <= set(seen[1])
    if method == "mib":
        assert {"loss/unce", "loss/unkd"} <= set(seen[0])


def _toy(num_old=3, num_new=2, seed=0):
    torch.manual_seed(seed)
    task = get_task("15-5")
    model = build_segmenter("small", [num_old, num_new], small_width=8, head_channels=16)
    old = build_segmenter("small", [num_old], small_width=8, head_channels=16).eval()
    return task, model, old


def test_wilson_localizer_pretraining_gives_head_no_gradient():
    from wilson_ray.methods.wilson import Wilson, WilsonParams

    task = get_task("15-5")
    torch.manual_seed(0)
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    method = Wilson(WilsonParams(pseudo_epochs=2), task, 1)
    module = Trainable(model, method.build_localizer(model.backbone.out_channels, "bn_leaky"))
    labels = torch.zeros(2, 20)
    labels[:, 16] = 1
    batch = Batch(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long), labels)
    ctx = Context(module, module, old)
    terms = method.losses(ctx, batch, epoch=0)
    assert set(terms) == {"cls", "loc", "enc"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    module.zero_grad(set_to_none=True)
    terms = method.losses(ctx, batch, epoch=2)
    assert set(terms) == {"cls", "loc", "enc", "seg", "sss"}
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_wilson_weights_scale_terms():
    from wilson_ray.methods.wilson import Wilson, WilsonParams

    task = get_task("15-5")
    torch.manual_seed(0)
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    loc = Wilson(WilsonParams(), task, 1).build_localizer(model.backbone.out_channels, "bn_leaky")
    module = Trainable(model, loc).eval()  # eval: deterministic BN so both passes see the same numbers
    labels = torch.zeros(2, 20)
    labels[:, 17] = 1
    batch = Batch(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long), labels)
    ctx = Context(module, module, old)
    base = Wilson(WilsonParams(pseudo_epochs=0), task, 1).losses(ctx, batch, 0)
    scaled = Wilson(
        WilsonParams(pseudo_epochs=0, lambda_cls=2, lambda_loc=0, lambda_sss=3, lambda_enc=0.5, lambda_seg=4), task, 1
    ).losses(ctx, batch, 0)
    for k, w in {"cls": 2, "loc": 0, "sss": 3, "enc": 0.5, "seg": 4}.items():
        assert torch.allclose(scaled[k], w * base[k], rtol=1e-5, atol=1e-7), k


def test_single_class_step_warns_for_wilson_only():
    from wilson_ray.methods.mib import MiB, MiBParams
    from wilson_ray.methods.wilson import Wilson, WilsonParams

    task = get_task("15-1")
    assert "no negative images" in Wilson(WilsonParams(), task, 1).warnings()[0]
    assert Wilson(WilsonParams(), get_task("15-5"), 1).warnings() == []
    assert MiB(MiBParams(), task, 1).warnings() == []


@pytest.mark.parametrize("method", ["wilson", "mib"])
def test_figure_panels_hook(method, synth_root, step0_ckpt, tmp_path):
    """WILSON's overlay panels come from its own hook (the train loop calls ``figure_panels`` generically): the
    localizer's new-class map in [0, 1] and the pseudo-label's argmax, at the image's size; MiB has none."""
    overrides = {**TINY, "data.root": str(synth_root), "incremental.epochs": 1}
    if method == "wilson":
        overrides["method.pseudo_epochs"] = 0
    cfg = resolve_config("demo", method=method, overrides=overrides)
    result = train_step(cfg, 1, init_checkpoint=step0_ckpt, out_dir=tmp_path)
    live_method, ctx = result.live
    panels = live_method.figure_panels(ctx)
    if method == "mib":
        assert panels is None
        return
    task = get_task("15-5")
    image = torch.randn(1, 3, 48, 40)
    labels = torch.zeros(1, task.num_classes(1) - 1)
    labels[0, 16] = 1.0  # class 17 (a new class of 15-5 step 1)
    was = ctx.module.training
    heat, pseudo = panels(image, labels)
    assert heat.shape == (48, 40) and pseudo.shape == (48, 40)
    assert 0.0 <= heat.min() <= heat.max() <= 1.0
    assert pseudo.min() >= 0 and pseudo.max() < task.num_classes(1)
    assert ctx.module.training is was  # the panels restore the module's mode
