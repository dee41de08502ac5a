"""Confusion matrix, per-class IoU and the old/new/all mIoU columns (method.md §5)."""

from __future__ import annotations

import math

import numpy as np
import torch

from wilson_ray.protocol import VOID


class ConfusionMatrix:
    """Accumulates an n×n confusion matrix (rows: ground truth, columns: prediction) over pixels whose ground
    truth is in [0, n); 255 is ignored. Mergeable across workers: add the ``matrix`` tensors (all-reduce sum)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer label maps of the same shape."""
        n = self.num_classes
        target = target.reshape(-1).to(self.matrix.device)
        pred = pred.reshape(-1).to(self.matrix.device)
        valid = (target >= 0) & (target < n) & (target != VOID)
        idx = target[valid] * n + pred[valid].clamp_(0, n - 1)
        self.matrix += torch.bincount(idx, minlength=n * n).reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) per class; NaN for classes with no ground-truth pixel (excluded from means)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    union = gt + cm.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    iou[gt == 0] = np.nan
    return iou


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def miou_table(confusion: np.ndarray, old: list[int], new: list[int]) -> dict[str, float]:
    """mIoU columns in percent (method.md §5).

    ``miou_old``/``miou_new``: means over the old/new foreground internal indices (background excluded);
    ``miou_all``: mean over every class, background included (the WILSON paper's "All");
    ``miou_all_mib``: mean over foreground classes only (MiB's convention, MiB issue #21);
    ``miou_hm``: harmonic mean of old and new (``harmonic_mean``); ``iou_background``. Means skip classes
    with no ground-truth pixel.
    """
    iou = per_class_iou(confusion) * 100.0
    old_m = _mean(iou[old]) if old else float("nan")
    new_m = _mean(iou[new]) if new else float("nan")
    return {
        "miou_old": old_m,
        "miou_new": new_m,
        "miou_all": _mean(iou),
        "miou_all_mib": _mean(iou[1:]),
        "miou_hm": harmonic_mean(old_m, new_m),
        "iou_background": float(iou[0]),
    }


def harmonic_mean(old: float, new: float) -> float:
    """Harmonic mean 2·old·new / (old + new) of old- and new-class mIoU (the usual single number of
    class-incremental learning: high only when the step both keeps the old classes and learns the new ones).
    NaN when either is NaN (no old or no new classes), 0 when both are 0."""
    if math.isnan(old) or math.isnan(new):
        return float("nan")
    return 0.0 if old + new <= 0 else 2.0 * old * new / (old + new)
