"""The memory of earlier steps' images (docs/method.md §9): the class-balanced selection rule (budget, balance,
seeding), the memory chosen for a step from the carried memory and the previous step's images, stored with the
step's checkpoint and reloaded (WILSON and every pixel-label row: finetune, MiB, LwF, ILT, PLOP), memory images
joining each method's batches with the old model's targets, a memory step of each pixel row trained end to end,
memory_size 0 leaving every method's losses and gradients bit-identical to the code before the memory, and the
memory search space."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from spies import EpochSpy

from tests.methods.test_methods import TINY, step0_ce_ckpt, step0_ckpt  # noqa: F401  (module fixtures)
from wilson_ray import losses
from wilson_ray.checkpoint import load_checkpoint, save_checkpoint
from wilson_ray.config import resolve_config
from wilson_ray.data.memory import (
    MemoryParams,
    class_counts,
    memory_json_path,
    read_memory_json,
    select_memory,
)
from wilson_ray.engine import train_step
from wilson_ray.errors import UserError
from wilson_ray.losses import IGNORE_INDEX
from wilson_ray.methods import METHODS, get_method
from wilson_ray.methods.base import Batch, Context, MemoryMethod, Method, Trainable, memory_replay_loss
from wilson_ray.methods.ce_step0 import CEStepZero
from wilson_ray.methods.plop import absorbed_logits, pod_loss, pseudo_label
from wilson_ray.methods.wilson import Wilson, WilsonParams
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.protocol import get_task
from wilson_ray.step_setup import attach_memory

PIXEL_ROWS = ("finetune", "mib", "lwf", "ilt", "plop")
SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def _pool(n_per_class: dict[int, int]) -> list[dict]:
    pool, k = [], 0
    for c, n in n_per_class.items():
        for _ in range(n):
            pool.append({"step": 0, "image_id": f"img{k:03d}", "classes": [c]})
            k += 1
    pool.append({"step": 0, "image_id": "both", "classes": [1, 2]})
    return pool


@pytest.mark.parametrize("budget", [1, 5, 9, 12, 40, 200])
def test_class_balanced_selection_never_exceeds_the_budget_and_balances_classes(budget):
    pool = _pool({1: 50, 2: 30, 3: 4, 4: 20})
    chosen = select_memory(pool, budget, "class_balanced", seed=3)
    assert len(chosen) == min(budget, len(pool))
    assert len({e["image_id"] for e in chosen}) == len(chosen)  # no image twice
    counts = class_counts(chosen)
    if budget == 12:  # 3 rounds of 4 classes: 3 images each ("both" may count for 1 and 2)
        assert all(3 <= counts[c] <= 4 for c in (1, 2, 3, 4))
    if budget == 40:  # class 3 has only 4 images; the others share the rest evenly
        assert counts[3] == 4 and max(counts[c] for c in (1, 2, 4)) - min(counts[c] for c in (1, 2, 4)) <= 2
    assert select_memory(pool, budget, "random", seed=3).__len__() == min(budget, len(pool))


def test_selection_is_deterministic_for_a_seed_and_changes_with_it():
    pool = _pool({1: 40, 2: 40, 3: 40})
    a = select_memory(pool, 10, "class_balanced", seed=7)
    assert a == select_memory(copy.deepcopy(pool), 10, "class_balanced", seed=7)
    assert a != select_memory(pool, 10, "class_balanced", seed=8)
    assert select_memory(pool, 0, "class_balanced", seed=7) == [] and select_memory([], 5, "random", 0) == []


def test_bad_memory_settings_are_one_line_errors():
    for kwargs, field in [
        ({"memory_size": -1}, "memory_size"),
        ({"memory_rule": "herding"}, "memory_rule"),
        ({"memory_ratio": 0.0}, "memory_ratio"),
        ({"memory_weight": -1.0}, "memory_weight"),
    ]:
        with pytest.raises(UserError, match=f"method.{field}"):
            WilsonParams(**kwargs)
    with pytest.raises(UserError, match="did you mean 'method.memory_size'|memory_size"):
        resolve_config("demo", method="wilson", overrides={"method.memory_sise": 4})


def _cfg(root, size, method="wilson"):
    overrides = {**TINY, "data.root": str(root), "data.task": "15-1", "method.memory_size": size}
    return resolve_config("demo", method=method, overrides=overrides)


def test_the_interface_has_one_memory_hook_and_every_memory_row_shares_its_implementation():
    assert not any(hasattr(Method, h) for h in ("memory_budget", "carried_memory", "use_memory"))
    with_memory = sorted(n for n, c in METHODS.items() if issubclass(c.Params, MemoryParams))
    assert with_memory == ["cam_online", "finetune", "ilt", "lwf", "mib", "plop", "wilson"]
    assert all(issubclass(METHODS[n], MemoryMethod) for n in with_memory)
    task = get_task("15-5")
    for name in with_memory:
        cls = METHODS[name]
        assert cls(cls.Params(), task, 1).memory() is None  # memory_size 0: off
        on = cls(cls.Params(memory_size=5, memory_rule="random"), task, 1).memory()
        assert (on.budget, on.rule, on.carried, on.state_dict()) == (5, "random", [], {})
    sdr = get_method("sdr")
    assert sdr(sdr.Params(), task, 1).memory() is None  # a method without the option


@pytest.mark.parametrize("method", ["wilson", *PIXEL_ROWS])
def test_memory_is_chosen_from_earlier_steps_stored_with_the_checkpoint_and_carried_on(method, synth_root, tmp_path):
    cfg = _cfg(synth_root, 20, method)
    cls = get_method(method)
    task = get_task("15-1")
    m1 = cls.for_step(cfg.method.args, task, 1)
    entries = attach_memory(cfg, task, 1, m1)
    assert 0 < len(entries) <= 20 and all(e["step"] == 0 for e in entries)
    assert all(set(e["classes"]) <= set(range(1, 16)) for e in entries)  # step-0 classes only
    assert entries == attach_memory(cfg, task, 1, cls.for_step(cfg.method.args, task, 1))  # same seed, same set
    replay = m1.memory().replay
    images = replay.draw(len(entries) + 2)  # past the end: a second shuffled pass
    assert images.shape == (len(entries) + 2, 3, 64, 64) and replay.cursor == 2

    # Stored with step 1's checkpoint (method state + step1.memory.json beside it) and reloaded.
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    path = save_checkpoint(tmp_path / "step1.pt", model, cfg, task, 1, {}, m1.state_dict())
    assert memory_json_path(path) == tmp_path / "step1.memory.json"
    assert read_memory_json(memory_json_path(path)) == entries
    state = load_checkpoint(path)["method_state"]
    assert state["memory"] == entries and state["memory_budget"] == 20

    # Step 2: the pool is step 1's memory plus step 1's images, re-balanced to the same budget.
    m2 = cls.for_step(cfg.method.args, task, 2)
    m2.load_state_dict(state)
    assert m2.memory().carried == entries
    entries2 = attach_memory(cfg, task, 2, m2)
    assert 0 < len(entries2) <= 20 and {e["step"] for e in entries2} <= {0, 1}
    assert any(e["step"] == 1 and 16 in e["classes"] for e in entries2)  # the class step 1 added is kept
    assert all(e in entries for e in entries2 if e["step"] == 0)  # step-0 images come only from the memory


@pytest.mark.parametrize("method", ["wilson", *PIXEL_ROWS])
def test_memory_off_chooses_nothing_and_stores_nothing(method, synth_root):
    cfg = _cfg(synth_root, 0, method)
    task = get_task("15-1")
    m = get_method(method).for_step(cfg.method.args, task, 1)
    assert attach_memory(cfg, task, 1, m) == [] and m.memory() is None
    assert "memory" not in m.state_dict()


def _wilson_setup(params, seed=0):
    task = get_task("15-1")
    torch.manual_seed(seed)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    model.load_state_dict(old.state_dict(), strict=False)
    method = Wilson(params, task, 1)
    module = Trainable(model, method.build_localizer(model.backbone.out_channels, "bn_leaky"))
    return method, Context(net=module, module=module, old_model=old), module


def _batch(n=2, size=32):
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(n, 16)
    labels[:, 15] = 1.0  # the step's new class (pottedplant, internal 16) is in every image
    return Batch(torch.randn(n, 3, size, size, generator=g), torch.zeros(n, size, size, dtype=torch.long), labels)


class _Fixed:
    """A stand-in memory: draws the same images every time."""

    def __init__(self, images):
        self.images, self.entries = images, [{"step": 0, "image_id": "x", "classes": [1]}]

    def draw(self, k):
        return self.images[:k]


def test_memory_images_join_the_batch_with_the_old_models_targets():
    params = WilsonParams(memory_size=4, memory_ratio=1.5, pseudo_epochs=0, pamr_iterations=1)
    method, ctx, module = _wilson_setup(params)
    memory = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    method.memory().attach(_Fixed(memory))
    seen = {}
    real = module.forward

    def spy(x, **kw):
        out = real(x, **kw)
        seen["images"], seen["logits"] = x, out.logits
        return out

    module.forward = spy
    batch = _batch()
    terms = method.losses(ctx, batch, epoch=0)
    assert seen["images"].shape[0] == 2 + 3  # round(1.5 × 2) memory images after the new ones
    assert torch.equal(seen["images"][2:], memory)
    s_old = ctx.old_model(memory, upsample=False).logits  # at the features' resolution, as WILSON
    assert s_old.argmax(1).max() < 16  # targets are old classes or background, never the new class
    expected = memory_replay_loss(seen["logits"][2:], s_old)
    assert set(terms) == {"cls", "loc", "enc", "seg", "sss", "mem"}
    assert torch.allclose(terms["mem"], expected) and terms["mem"] > 0
    sum(terms.values()).backward()
    assert module.model.classifiers[0].weight.grad.abs().sum() > 0
    # Localizer-only epochs are unchanged: no memory images there.
    method.p.pseudo_epochs = 5
    method.losses(ctx, batch, epoch=0)
    assert seen["images"].shape[0] == 2


def test_memory_replay_loss_is_the_cross_entropy_to_the_old_argmax():
    s_old = torch.zeros(1, 3, 2, 2)
    s_old[0, 2] = 1.0  # old argmax: class 2 everywhere
    logits = torch.full((1, 4, 2, 2), -10.0)
    logits[0, 2] = 10.0
    assert memory_replay_loss(logits, s_old) < 1e-6
    logits[0, 3] = 20.0  # the new class wins: penalised
    assert memory_replay_loss(logits, s_old) > 9.0


def _reference_losses(method, ctx, batch, epoch):
    """WILSON's losses as written before the memory existed (the code path memory_size 0 must keep)."""
    pseudo = epoch >= method.p.pseudo_epochs
    out = ctx.net(batch.images, logits=pseudo, upsample=False, localizer=True, localizer_eval=pseudo)
    f, z, z_bar = out.features, out.localizer, out.localizer_eval
    old = method.old_outputs(ctx, batch.images)
    s_old, f_old = old.logits, old.features
    if not pseudo:
        method.track_head_statistics(ctx, f)
    terms = method.localizer_losses(z, s_old, batch.labels)
    terms["enc"] = method.p.lambda_enc * losses.encoder_distillation_loss(f, f_old)
    if pseudo:
        with torch.no_grad():
            q_hat, weight = method.targets(z_bar, batch.labels, s_old.float())
        terms["seg"] = method.p.lambda_seg * losses.segmentation_loss(out.logits, q_hat, weight)
        terms.update(method.self_supervision(z, z_bar, batch))
    return terms


@pytest.mark.parametrize("epoch", [0, 1])
def test_memory_size_zero_is_bit_identical_to_wilson_without_memory(epoch):
    params = WilsonParams(pseudo_epochs=1, pamr_iterations=1)
    method, ctx, module = _wilson_setup(params)
    ref_method, ref_ctx, ref_module = _wilson_setup(copy.deepcopy(params))
    batch = _batch()
    torch.manual_seed(5)
    got = method.losses(ctx, batch, epoch)
    torch.manual_seed(5)
    want = _reference_losses(ref_method, ref_ctx, batch, epoch)
    assert set(got) == set(want) and "mem" not in got
    assert all(torch.equal(got[k], want[k]) for k in want)
    sum(got.values()).backward()
    sum(want.values()).backward()
    for (name, a), b in zip(module.named_parameters(), ref_module.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name


# --- the pixel-label rows --------------------------------------------------------------------------------------


def _pixel_setup(name, params, seed=0):
    """A step-1 method of 15-5 on the small backbone, its Context and trainable; PLOP gets thresholds τ (its
    before-training pass) that accept the old model's label on every background pixel (an untrained old model's
    entropy is near its maximum everywhere)."""
    task = get_task("15-5")
    torch.manual_seed(seed)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    model.load_state_dict(old.state_dict(), strict=False)
    method = get_method(name)(params, task, 1)
    if name == "plop":
        method.thresholds = torch.full((method.num_old,), 1.0)
    module = Trainable(model)
    return method, Context(net=module, module=module, old_model=old), module


def _pixel_batch(n=2, size=32):
    """Images with masks of background, the step's new classes (16-20) and some void."""
    g = torch.Generator().manual_seed(3)
    masks = torch.randint(0, 6, (n, size, size), generator=g)
    masks = torch.where(masks > 0, masks + 15, masks)
    masks[:, :3, :3] = IGNORE_INDEX
    labels = torch.zeros(n, 20)
    labels[:, 15:] = 1.0
    return Batch(torch.randn(n, 3, size, size, generator=g), masks, labels)


def _reference_pixel_losses(name, method, ctx, batch):
    """The pixel rows' losses as committed before they had a memory (the code path memory_size 0 must keep)."""
    p = method.p
    if name == "finetune":
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        return {"ce": F.cross_entropy(s, batch.masks, ignore_index=255)}
    if name == "mib":
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        s_old = method.old_outputs(ctx, batch.images, upsample=True).logits
        return {
            "unce": losses.unbiased_ce_loss(s, batch.masks, method.num_old),
            "unkd": p.kd_weight * losses.unbiased_kd_loss(s, s_old, alpha=p.kd_alpha),
        }
    if name in ("lwf", "ilt"):
        out = ctx.net(batch.images, logits=True, upsample=True)
        old = method.old_outputs(ctx, batch.images, upsample=True)
        terms = {
            "ce": F.cross_entropy(out.logits, batch.masks, ignore_index=255),
            "kd": p.kd_weight * losses.kd_loss(out.logits, old.logits, p.kd_temperature),
        }
        if name == "ilt":
            terms["enc"] = p.lambda_enc * losses.encoder_distillation_loss(out.features, old.features)
        return terms
    size = batch.images.shape[-2:]  # PLOP
    out = ctx.net(batch.images, logits=True, upsample=False, maps=True)
    old = ctx.old_model(batch.images, upsample=False, maps=True)
    s = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False).float()
    s_old_up = F.interpolate(old.logits.float(), size=size, mode="bilinear", align_corners=False)
    masks, nu = pseudo_label(batch.masks, s_old_up, method.thresholds, method.num_classes)
    ce = (F.cross_entropy(s, masks, ignore_index=IGNORE_INDEX, reduction="none") * nu[:, None, None]).mean()
    scales = list(p.pod_scales)
    pod = sum(p.pod_weight * pod_loss(a, b, scales) for a, b in zip(out.maps, old.maps))
    pod = pod + p.pod_logits_weight * pod_loss(absorbed_logits(out.logits, method.num_old), old.logits, scales)
    return {"ce": ce, "pod": pod * math.sqrt(method.num_classes / method.num_new) / (len(out.maps) + 1)}


@pytest.mark.parametrize("name", PIXEL_ROWS)
def test_memory_size_zero_leaves_a_pixel_rows_losses_and_gradients_bit_identical(name):
    params = get_method(name).Params()
    assert params.memory_size == 0
    method, ctx, module = _pixel_setup(name, params)
    ref_method, ref_ctx, ref_module = _pixel_setup(name, copy.deepcopy(params))
    batch = _pixel_batch()
    got = method.losses(ctx, batch, 0)
    want = _reference_pixel_losses(name, ref_method, ref_ctx, batch)
    assert set(got) == set(want) and "mem" not in got
    assert all(torch.equal(got[k], want[k]) for k in want), {k: (got[k], want[k]) for k in want}
    assert all(v > 0 for v in want.values())  # every term is live, so the comparison means something
    sum(got.values()).backward()
    sum(want.values()).backward()
    for (key, a), b in zip(module.named_parameters(), ref_module.parameters()):
        assert (a.grad is None) == (b.grad is None), key
        assert a.grad is None or torch.equal(a.grad, b.grad), key
    assert method.state_dict() == ({"thresholds": method.thresholds} if name == "plop" else {})


@pytest.mark.parametrize("name", PIXEL_ROWS)
def test_memory_images_join_a_pixel_rows_batch_with_the_old_models_argmax_as_target(name):
    params = get_method(name).Params(memory_size=4, memory_ratio=1.5, memory_weight=2.0)
    method, ctx, module = _pixel_setup(name, params)
    memory = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    method.memory().attach(_Fixed(memory))
    seen = {}
    real = module.forward

    def spy(x, **kw):
        out = real(x, **kw)
        seen["images"], seen["out"] = x, out
        return out

    module.forward = spy
    batch = _pixel_batch()
    terms = method.losses(ctx, batch, epoch=0)
    images, out = seen["images"], seen["out"]
    assert images.shape[0] == 2 + 3 and torch.equal(images[2:], memory)  # one forward: BN sees one batch
    upsample = name != "plop"  # the resolution of the logits each method already computes
    s_old = ctx.old_model(memory, upsample=upsample).logits
    assert s_old.shape[1] == 16 and s_old.argmax(1).max() < 16  # targets: background or old classes only
    assert set(terms) == {*_reference_pixel_losses(name, *_pixel_setup(name, params)[:2], batch), "mem"}
    assert torch.isfinite(terms["mem"]) and terms["mem"] > 0
    assert torch.allclose(terms["mem"], 2.0 * memory_replay_loss(out.logits[2:], s_old), atol=1e-5)
    # The method's own terms see the new images only (old model on them alone; same new-model outputs).
    old_new = ctx.old_model(batch.images, upsample=upsample)
    if name == "mib":
        want = params.kd_weight * losses.unbiased_kd_loss(out.logits[:2], old_new.logits, alpha=params.kd_alpha)
        assert torch.allclose(terms["unkd"], want, atol=1e-5)
    if name in ("lwf", "ilt"):
        want = params.kd_weight * losses.kd_loss(out.logits[:2], old_new.logits, params.kd_temperature)
        assert torch.allclose(terms["kd"], want, atol=1e-5)
    if name == "ilt":
        want = params.lambda_enc * losses.encoder_distillation_loss(out.features[:2], old_new.features)
        assert torch.allclose(terms["enc"], want, atol=1e-5)
    if name in ("finetune", "lwf", "ilt"):
        want = F.cross_entropy(out.logits[:2], batch.masks, ignore_index=255)
        assert torch.allclose(terms["ce"], want)
    sum(terms.values()).backward()
    assert module.model.classifiers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PIXEL_ROWS)
def test_a_pixel_rows_memory_step_trains_within_budget_and_stores_its_memory(
    name,
    synth_root,
    step0_ckpt,  # noqa: F811
    step0_ce_ckpt,  # noqa: F811
    tmp_path,
):
    budget = 6
    overrides = {**TINY, "data.root": str(synth_root), "method.memory_size": budget}
    cfg = resolve_config("demo", method=name, overrides=overrides)
    init = step0_ce_ckpt if get_method(name).step0 is CEStepZero else step0_ckpt
    spy = EpochSpy()
    seen = spy.metrics

    result = train_step(cfg, 1, init_checkpoint=init, out_dir=tmp_path, callbacks=[spy])
    assert len(seen) == 2 and all("loss/mem" in m and math.isfinite(m["loss/mem"]) for m in seen)
    assert all(m["loss/mem"] > 0 and math.isfinite(m["loss/total"]) for m in seen)
    state = load_checkpoint(result.checkpoint)["method_state"]
    entries = state["memory"]
    assert 0 < len(entries) <= budget and all(e["step"] == 0 for e in entries)
    assert (state["memory_budget"], state["memory_rule"]) == (budget, "class_balanced")
    assert all(set(e["classes"]) <= set(range(1, 16)) for e in entries)  # 15-5: step-0 classes only
    stored = json.loads(memory_json_path(result.checkpoint).read_text())
    assert stored["step"] == 1 and stored["budget"] == budget and stored["size"] == len(entries)
    assert read_memory_json(memory_json_path(result.checkpoint)) == entries
    if name == "plop":  # its own state still travels beside the memory
        assert state["thresholds"].shape == (16,)


# --- the search space ------------------------------------------------------------------------------------------


def test_the_memory_search_space_sweeps_typed_memory_parameters_into_wilson_params():
    from wilson_ray.orchestration.search_space import load_search_space, trial_overrides

    space = load_search_space(SPACES / "wilson-memory.yaml")
    params = {p.key: p for p in space.params}
    assert set(params) == {"method.memory_size", "method.memory_weight"}
    size, weight = params["method.memory_size"], params["method.memory_weight"]
    assert (size.distribution, size.values, size.default) == ("choice", [0, 8, 16, 32], 0)
    assert (weight.distribution, weight.low, weight.high, weight.default) == ("loguniform", 0.1, 10.0, 1.0)
    assert space.base_config().method.name == "wilson" and space.step == 1
    assert space.base_config().method.args.memory_size == 0  # the default trial: WILSON without a memory
    values = trial_overrides(space, {"method.memory_size": 16, "method.memory_weight": 2.5, "other": 1})
    cfg = space.resolve(values)
    args = cfg.method.args
    assert isinstance(args, WilsonParams) and (args.memory_size, args.memory_weight) == (16, 2.5)
    assert isinstance(args.memory_size, int)
    memory = Wilson.for_step(args, get_task(cfg.data.task), 1).memory()
    assert (memory.budget, memory.rule) == (16, "class_balanced")
    with pytest.raises(UserError, match="method.memory_size"):
        space.resolve({"method.memory_size": -3})
