"""What the training iteration holds at its memory peak (issue 28: our fp32 eager used 130–240 MiB more peak RSS
than the official code at the same speed).

The peak of a step-t iteration is the end of the forward (every activation saved for backward) or the start of
the backward. The previous iteration's gradients (one fp32 copy of every trainable parameter: 242 MiB for
ResNet-101 DeepLab + localizer) must not be alive then: ``engine.train_one_epoch`` (and the benchmark's copy of
its loop body, ``benchmarks.common.iteration``) zero them, ``set_to_none``, before the forward, as the official
code's ``optim.zero_grad()`` precedes its new model's forward. Moving the call changes no number: the tests
below compare the losses, the parameters after SGD and the BatchNorm statistics bit for bit with the old order
(losses, then zero_grad, then backward) on the small backbone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from wilson_ray import engine, runtime  # noqa: E402

ITERS = 3


def _setup() -> common.StepSetup:
    """The benchmark's fp32-eager WILSON step-1 setup (every term on) on the small backbone; same seed, same
    weights every call."""
    opts = common.StepOptions(
        backbone="small",
        size=64,
        batch=4,
        step=1,
        method="wilson",
        amp="none",
        channels_last=False,
        frozen_old_model=False,
        fused_sgd=False,
        valid_taps=False,
        seed=0,
    )
    torch.manual_seed(0)
    return common.build_setup(opts)


def _batches(s: common.StepSetup) -> list:
    """ITERS different batches (different seeds), so each iteration's gradients differ."""
    device = s.device
    return [common.make_batch(s.task, 1, 4, 64, device, seed) for seed in range(ITERS)]


def _record_grads_at_losses(s: common.StepSetup) -> list[int]:
    """Wrap ``s.method.losses``: for each call, the bytes of trainable-parameter gradients alive while it runs
    (its forward), measured when it returns."""
    alive: list[int] = []
    inner = s.method.losses

    def losses(*args, **kwargs):
        out = inner(*args, **kwargs)
        alive.append(sum(p.grad.numel() * p.grad.element_size() for p in s.module.parameters() if p.grad is not None))
        return out

    s.method.losses = losses
    return alive


def _old_order_epoch(s: common.StepSetup, batches: list) -> dict:
    """The loop body as it was before issue 28 (zero_grad between the forward and the backward); the epoch
    means of the loss terms as ``train_one_epoch`` returns them."""
    sums: dict[str, float] = {}
    for batch in batches:
        with runtime.autocast_context(s.device, "none"):
            terms = s.method.losses(s.ctx, batch, s.epoch)
        total = sum(terms.values())
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(total).backward()
        for p in s.module.parameters():
            if p.grad is None and p.requires_grad:
                p.grad = torch.zeros_like(p)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["total"] = sums.get("total", 0.0) + float(total.detach())
    return {f"loss/{k}": v / len(batches) for k, v in sums.items()}


def _state(s: common.StepSetup) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in s.module.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def old_order():
    s = _setup()
    alive = _record_grads_at_losses(s)
    means = _old_order_epoch(s, _batches(s))
    return means, _state(s), alive


def test_engine_frees_gradients_before_the_forward_and_numbers_are_unchanged(old_order):
    want_means, want_state, old_alive = old_order
    grad_bytes = sum(p.numel() * p.element_size() for p in _setup().module.parameters() if p.requires_grad)
    # The old order held the previous iteration's gradients (all of them) across every forward but the first.
    assert old_alive == [0] + [grad_bytes] * (ITERS - 1)

    s = _setup()
    alive = _record_grads_at_losses(s)
    loop = engine.Loop(
        step=1, device=s.device, amp="none", channels_last=False, world=1, log_interval=1, fail_on_nonfinite=True
    )
    got = engine.train_one_epoch(s.method, s.ctx, _batches(s), s.optimizer, s.scheduler, s.scaler, loop, s.epoch)
    assert alive == [0] * ITERS, "gradients alive during the forward"
    assert set(want_means) == {f"loss/{k}" for k in ("cls", "loc", "enc", "seg", "sss", "total")}
    for k, v in want_means.items():
        assert v > 0 and got[k] == pytest.approx(v, rel=1e-6, abs=0), k
    state = _state(s)
    assert state.keys() == want_state.keys()
    for k, v in want_state.items():
        assert torch.equal(state[k], v), k  # weights after 3 SGD steps and BN running statistics, bit for bit
    assert all(p.grad is not None for p in s.module.parameters() if p.requires_grad)  # the last step's, kept


def test_benchmark_iteration_frees_gradients_before_the_forward(old_order):
    want_means, want_state, _ = old_order
    s = _setup()
    alive = _record_grads_at_losses(s)
    totals = []
    for batch in _batches(s):
        s.batch = batch
        totals.append(float(common.iteration(s)))
    assert alive == [0] * ITERS
    assert sum(totals) / ITERS == pytest.approx(want_means["loss/total"], rel=1e-6, abs=0)
    state = _state(s)
    for k, v in want_state.items():
        assert torch.equal(state[k], v), k
