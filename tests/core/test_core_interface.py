"""The core's module split and method interface (issue 11): model output convention, WILSON's localizer pass
order, the iabn: weights path, MiB's α, and the hooks a method gets (task view, step-0 strategy, extra inputs,
pre-training pass, parameter groups, state carried in the checkpoint)."""

import copy
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tests.core.test_models import _torchvision_to_iabn
from tests.methods.test_methods import TINY, step0_ckpt  # noqa: F401  (module fixture)
from wilson_ray import losses, step_setup
from wilson_ray.checkpoint import load_checkpoint, save_checkpoint
from wilson_ray.config import MethodConfig, resolve_config
from wilson_ray.engine import DeviceBatches, Loop, train_step
from wilson_ray.errors import UserError
from wilson_ray.methods import METHODS, get_method
from wilson_ray.methods.base import Batch, Context, StepZero, Trainable
from wilson_ray.methods.finetune import Finetune
from wilson_ray.methods.mib import MiBParams
from wilson_ray.methods.wilson import Wilson, WilsonParams
from wilson_ray.models.segmenter import ModelOutput, build_segmenter
from wilson_ray.protocol import get_task


def _wilson_toy(seed=0):
    task = get_task("15-5")
    torch.manual_seed(seed)
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    method = Wilson(WilsonParams(pseudo_epochs=0, pamr_iterations=0), task, 1)
    module = Trainable(model, method.build_localizer(model.backbone.out_channels, "bn_leaky")).train()
    # Running statistics away from their init, so pre- and post-batch statistics give different z̄.
    with torch.no_grad():
        module(torch.randn(4, 3, 64, 64), logits=False, localizer=True)
    labels = torch.zeros(2, 20)
    labels[:, 16] = 1
    batch = Batch(torch.randn(2, 3, 64, 64) * 3 + 1, torch.zeros(2, 64, 64, dtype=torch.long), labels)
    return method, module, old, batch


def test_model_output_is_one_convention():
    model = build_segmenter("small", [4, 2], small_width=8, head_channels=16).eval()
    x = torch.randn(1, 3, 32, 32)
    out = model(x, upsample=True)
    assert isinstance(out, ModelOutput) and out.logits.shape == (1, 6, 32, 32) and out.localizer is None
    t = Trainable(model).eval()(x, logits=True, upsample=True)
    assert isinstance(t, ModelOutput)
    assert torch.equal(t.logits, out.logits) and torch.equal(t.features, out.features)


def test_wilson_z_bar_uses_running_statistics_from_before_the_batch():
    method, module, old, batch = _wilson_toy()
    before = copy.deepcopy(module.localizer).eval()
    stats_before = [b.clone() for n, b in module.localizer.named_buffers() if "running_mean" in n]
    seen = {}
    targets = method.targets

    def spy(z_bar, labels, s_old):
        seen["z_bar"] = z_bar.clone()
        return targets(z_bar, labels, s_old)

    method.targets = spy
    terms = method.losses(Context(module, module, old), batch, epoch=0)
    assert {"seg", "sss", "cls", "loc", "enc"} <= set(terms)
    with torch.no_grad():
        f = module.model.backbone(batch.images)  # train-mode BN: batch statistics, the same features again
        expected = before(f)
        after = copy.deepcopy(module.localizer).eval()(f)
    stats_after = [b for n, b in module.localizer.named_buffers() if "running_mean" in n]
    # the train-mode pass of this batch did update the statistics, so the two orders give different z̄ ...
    assert any(not torch.equal(a, b) for a, b in zip(stats_before, stats_after))
    assert not torch.allclose(after, expected, rtol=1e-3, atol=1e-4)
    # ... and z̄ is the one of the statistics from before the batch (the reference's order)
    torch.testing.assert_close(seen["z_bar"], expected, rtol=1e-5, atol=1e-5)


def test_iabn_prefix_loads_a_mapillary_checkpoint_through_the_config(tmp_path):
    cfg = resolve_config("demo", overrides={**TINY, "data.root": str(tmp_path)})
    torch.manual_seed(3)
    reference_model = step_setup.build_model(cfg, get_task("15-5"), 0)
    reference = {
        k: (torch.randn_like(v) if v.is_floating_point() else v)
        for k, v in reference_model.backbone.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    iabn = {_torchvision_to_iabn(k): v for k, v in reference.items()}  # module. prefix, fused bn modules
    assert "module.mod1.bn1.running_var" in iabn and any(".convs.bn2.weight" in k for k in iabn)
    path = tmp_path / "small_iabn.pth.tar"
    torch.save({"state_dict": iabn}, path)
    cfg.model.pretrained = f"iabn:{path}"
    model, old_model, _ = step_setup.initial_models(cfg, get_task("15-5"), 0)
    assert old_model is None
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    cfg.model.pretrained = f"iabn:{tmp_path / 'missing.pth.tar'}"
    with pytest.raises(UserError, match="missing.pth.tar: not found"):
        step_setup.initial_models(cfg, get_task("15-5"), 0)
    plain = tmp_path / "plain.pth"
    torch.save(reference, plain)
    cfg.model.pretrained = f"iabn:{plain}"
    with pytest.raises(UserError, match="expected the InPlace-ABN layout"):
        step_setup.initial_models(cfg, get_task("15-5"), 0)


def test_mib_alpha_scales_the_teacher_only():
    torch.manual_seed(0)
    s, s_old = torch.randn(2, 7, 3, 3), torch.randn(2, 4, 3, 3)
    q = torch.softmax(2.0 * s_old, dim=1)  # MiB: targets * alpha, then softmax; student unscaled
    den = torch.logsumexp(s, dim=1)
    log_bkg = torch.logsumexp(torch.cat([s[:, :1], s[:, 4:]], 1), dim=1) - den
    expected = -((q[:, 0] * log_bkg + (q[:, 1:] * (s[:, 1:4] - den.unsqueeze(1))).sum(1)) / 4).mean()
    assert losses.unbiased_kd_loss(s, s_old, alpha=2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.unbiased_kd_loss(s, s_old, temperature=0.5).item() != pytest.approx(expected.item(), rel=1e-3)
    assert MiBParams().kd_alpha == 1.0 and not hasattr(MiBParams(), "kd_temperature")


def test_task_view_and_step_zero_strategy():
    task = get_task("15-5")
    joint = get_method("joint")
    view = joint.task_view(task)
    assert view.train.num_steps == 1 and view.report is task and joint.step0 is None
    assert get_method("wilson").task_view(task) == (task, None)
    params = WilsonParams()
    assert type(Wilson.for_step(params, task, 0)) is StepZero
    assert type(Wilson.for_step(params, task, 1)) is Wilson
    assert StepZero(params, task, 0).build_localizer(8, "bn_leaky") is None
    assert type(joint.for_step(joint.Params(), view.train, 0)) is joint


class _Toy(Dataset):
    def __init__(self, supply=True):
        self.supply = supply
        if supply:
            self.extra_input = lambda name, i: torch.full((4, 4), float(i))

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long), torch.zeros(20)


def test_extra_inputs_reach_the_batch():
    wrapped = step_setup.WithExtraInputs(_Toy(), ("saliency",), "toy")
    loop = Loop(1, torch.device("cpu"), "none", False, 1, 1, True)
    batches = list(DeviceBatches(DataLoader(wrapped, batch_size=3), loop))
    assert len(batches) == 1 and set(batches[0].extras) == {"saliency"}
    assert batches[0].extras["saliency"][:, 0, 0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(UserError, match="needs per-sample inputs saliency"):
        step_setup.WithExtraInputs(_Toy(supply=False), ("saliency",), "toy")


@dataclass
class _ProtoParams:
    pass


class _Prototypes(Finetune):
    """A method with a pre-training pass over the step's data with the old model, a frozen encoder and state."""

    name = "prototypes-test"
    Params = _ProtoParams
    calls: list = []

    def before_training(self, ctx, loader):
        total, n = 0.0, 0
        for batch in loader:
            total = total + self.old_outputs(ctx, batch.images).features.mean(dim=(0, 2, 3))
            n += 1
        self.prototype = total / n
        type(self).calls.append(n)

    def on_model_ready(self, model):
        model.backbone.requires_grad_(False)

    def param_groups(self, module, optim):
        return [g for g in super().param_groups(module, optim) if g["name"] != "backbone"]

    def state_dict(self):
        return {"prototype": self.prototype, "seen_steps": [self.step]}

    def load_state_dict(self, state):
        self.loaded = state


def test_method_hooks_and_state_survive_the_checkpoint(synth_root, step0_ckpt, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(METHODS, _Prototypes.name, _Prototypes)
    cfg = resolve_config("demo", method="finetune", overrides={**TINY, "data.root": str(synth_root)})
    cfg.method = MethodConfig(name=_Prototypes.name, args=_ProtoParams())
    step0 = load_checkpoint(step0_ckpt)
    result = train_step(cfg, 1, init_checkpoint=step0_ckpt, out_dir=tmp_path)
    assert _Prototypes.calls == [2]  # the pass saw the step's capped training batches
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["method_state"]["seen_steps"] == [1] and ckpt["method_state"]["prototype"].shape == (64,)  # 8 × width 8
    # frozen encoder: unchanged; head trained
    backbone = {
        k: v
        for k, v in ckpt["model"].items()
        if k.startswith("backbone.") and "running" not in k and "num_batches" not in k
    }
    assert all(torch.equal(v, step0["model"][k]) for k, v in backbone.items())
    assert backbone and any(
        not torch.equal(v, step0["model"][k])
        for k, v in ckpt["model"].items()
        if k.startswith("head.") and v.is_floating_point()
    )
    # the next step's method gets the state back from the checkpoint
    model, old_model, previous = step_setup.initial_models(cfg, get_task("15-5"), 1, step0_ckpt)
    method = _Prototypes.for_step(_ProtoParams(), get_task("15-5"), 1)
    method.load_state_dict(ckpt["method_state"])
    assert torch.equal(method.loaded["prototype"], ckpt["method_state"]["prototype"])


def test_save_checkpoint_round_trips_method_state(tmp_path):
    cfg = resolve_config("demo", overrides={**TINY, "data.root": str(tmp_path)})
    task = get_task("15-5")
    model = step_setup.build_model(cfg, task, 0)
    state = {"prototypes": torch.randn(3, 5), "thresholds": [0.5, 0.25], "nested": {"count": 7}}
    path = save_checkpoint(tmp_path / "step0.pt", model, cfg, task, 0, {"miou_all": 1.0}, state)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["method_state"]["prototypes"], state["prototypes"])
    assert ckpt["method_state"]["thresholds"] == [0.5, 0.25] and ckpt["method_state"]["nested"] == {"count": 7}
