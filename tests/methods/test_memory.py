"""The memory of earlier steps' images (docs/method.md §9): the class-balanced selection rule (budget, balance,
seeding), the memory chosen for a step from the carried memory and the previous step's images, stored with the
step's checkpoint and reloaded, memory images joining WILSON's batches with the old model's targets, and
memory_size 0 leaving WILSON's losses bit-identical."""

import copy
from pathlib import Path

import pytest
import torch

from tests.methods.test_methods import TINY
from wilson_ray import losses
from wilson_ray.checkpoint import load_checkpoint, save_checkpoint
from wilson_ray.config import resolve_config
from wilson_ray.data.memory import (
    class_counts,
    memory_json_path,
    read_memory_json,
    select_memory,
)
from wilson_ray.errors import UserError
from wilson_ray.methods.base import Batch, Context, Trainable, memory_replay_loss
from wilson_ray.methods.wilson import Wilson, WilsonParams
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.protocol import get_task
from wilson_ray.step_setup import attach_memory


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


def _cfg(root, size):
    overrides = {**TINY, "data.root": str(root), "data.task": "15-1", "method.memory_size": size}
    return resolve_config("demo", method="wilson", overrides=overrides)


def test_memory_is_chosen_from_earlier_steps_stored_with_the_checkpoint_and_carried_on(synth_root, tmp_path):
    cfg = _cfg(synth_root, 20)
    task = get_task("15-1")
    m1 = Wilson.for_step(cfg.method.args, task, 1)
    entries = attach_memory(cfg, task, 1, m1)
    assert 0 < len(entries) <= 20 and all(e["step"] == 0 for e in entries)
    assert all(set(e["classes"]) <= set(range(1, 16)) for e in entries)  # step-0 classes only
    assert entries == attach_memory(cfg, task, 1, Wilson.for_step(cfg.method.args, task, 1))  # same seed, same set
    images = m1.memory.draw(len(entries) + 2)  # past the end: a second shuffled pass
    assert images.shape == (len(entries) + 2, 3, 64, 64) and m1.memory.cursor == 2

    # Stored with step 1's checkpoint (method state + step1.memory.json beside it) and reloaded.
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    path = save_checkpoint(tmp_path / "step1.pt", model, cfg, task, 1, {}, m1.state_dict())
    assert memory_json_path(path) == tmp_path / "step1.memory.json"
    assert read_memory_json(memory_json_path(path)) == entries
    state = load_checkpoint(path)["method_state"]
    assert state["memory"] == entries and state["memory_budget"] == 20

    # Step 2: the pool is step 1's memory plus step 1's images, re-balanced to the same budget.
    m2 = Wilson.for_step(cfg.method.args, task, 2)
    m2.load_state_dict(state)
    assert m2.carried_memory() == entries
    entries2 = attach_memory(cfg, task, 2, m2)
    assert 0 < len(entries2) <= 20 and {e["step"] for e in entries2} <= {0, 1}
    assert any(e["step"] == 1 and 16 in e["classes"] for e in entries2)  # the class step 1 added is kept
    assert all(e in entries for e in entries2 if e["step"] == 0)  # step-0 images come only from the memory


def test_memory_off_chooses_nothing_and_stores_nothing(synth_root):
    cfg = _cfg(synth_root, 0)
    task = get_task("15-1")
    method = Wilson.for_step(cfg.method.args, task, 1)
    assert attach_memory(cfg, task, 1, method) == [] and method.memory is None and method.state_dict() == {}


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
    method.use_memory(_Fixed(memory))
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


def test_a_search_space_can_sweep_the_memory_budget(tmp_path):
    from wilson_ray.orchestration.search_space import load_search_space

    space_file = tmp_path / "memory.yaml"
    text = (Path(__file__).resolve().parents[2] / "search_spaces" / "demo-short.yaml").read_text()
    text = text.split("parameters:")[0].split("# The paper-default")[0]
    text += "parameters:\n  method.memory_size: {distribution: int, low: 0, high: 32}\n"
    text += "  method.memory_ratio: {distribution: uniform, low: 0.25, high: 1.0}\n"
    space_file.write_text(text.replace("task: 15-5", "task: 15-1"))
    space = load_search_space(space_file)
    assert [p.key for p in space.params] == ["method.memory_size", "method.memory_ratio"]
    assert space.params[0].default == 0  # the default trial runs WILSON without a memory
