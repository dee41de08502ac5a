"""Fidelity fix: WILSON's localizer-only epochs still run the head in train mode (official `0 * outputs.mean()`)."""

import copy

import torch

from wilson_ray.methods.base import Batch, Context, Trainable
from wilson_ray.methods.wilson import Wilson, WilsonParams
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.protocol import get_task


def _setup():
    task = get_task("15-5")
    torch.manual_seed(0)
    model = build_segmenter("small", task.classes_per_step(1), small_width=8, head_channels=16)
    old = build_segmenter("small", task.classes_per_step(0), small_width=8, head_channels=16).eval()
    method = Wilson(WilsonParams(pseudo_epochs=2), task, 1)
    module = Trainable(model, method.build_localizer(model.backbone.out_channels, "bn_leaky")).train()
    labels = torch.zeros(2, 20)
    labels[:, 16] = 1
    batch = Batch(torch.randn(2, 3, 64, 64) * 2 + 0.5, torch.zeros(2, 64, 64, dtype=torch.long), labels)
    return method, model, Context(module, module, old), batch


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def test_pseudo_epoch_updates_head_batchnorm_as_the_official_forward():
    method, model, ctx, batch = _setup()
    official = copy.deepcopy(model)  # what the official code does: the full train-mode forward, loss += 0 * s.mean()
    before = _bn_buffers(model.head)
    assert before, "the head has BatchNorm buffers"

    terms = method.losses(ctx, batch, epoch=0)  # a localizer-only epoch
    assert set(terms) == {"cls", "loc", "enc"}
    sum(terms.values()).backward()

    s = official(batch.images, upsample=False).logits
    (0 * s.mean()).backward()
    after, expected = _bn_buffers(model.head), _bn_buffers(official.head)
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before if "running_mean" in k)
    assert moved > 1e-3  # the statistics moved (they stayed put before the fix)
    for k in before:
        assert torch.allclose(after[k].float(), expected[k].float(), atol=1e-6), k
    # Same (zero) gradient as the official 0 * mean: none reaches the head's parameters here; the engine zero-fills.
    assert all(p.grad is None for p in model.head.parameters())
    assert all(float(p.grad.abs().max()) == 0.0 for p in official.head.parameters())


def test_head_statistics_update_once_per_iteration_in_every_epoch():
    method, model, ctx, batch = _setup()
    counters = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for epoch in (0, 1, 2, 3):  # two localizer-only epochs, then ℓ_SEG epochs
        start = [int(m.num_batches_tracked) for m in counters]
        method.losses(ctx, batch, epoch=epoch)
        assert [int(m.num_batches_tracked) - s for m, s in zip(counters, start)] == [1] * len(counters), epoch
