"""A training callback the tests share: what ``engine.train_step`` reported after each epoch."""

from __future__ import annotations

from wilson_ray.engine import Callback


class EpochSpy(Callback):
    """Records each epoch's number (``epochs``, 1-based) and metrics (``metrics``) as ``train_step`` reports them."""

    def __init__(self):
        self.epochs: list[int] = []
        self.metrics: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, metrics, save_state) -> None:
        self.epochs.append(epoch)
        self.metrics.append(metrics)
