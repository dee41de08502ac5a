"""SDR (Michieli & Zanuttigh, CVPR'21): prototype matching, contrastive clustering (attraction/repulsion) and
feature sparsification on the body features, with MiB's unbiased CE and KD (baselines.md §2).

L = ℓ_UNCE + kd·ℓ_UNKD + pm·ℓ_PM + att·ℓ_att + rep·ℓ_rep + fs·ℓ_FS with SDR's published weights 100 / 0.01 / 1e-3 /
1e-3 / 1e-3; no balanced init; labels nearest-downsampled to the features' h×w.

The prototype bank P [C, D] with counts n is built during step 0 (the softmax-CE step 0 shared with PLOP,
``ce_step0``, which accumulates it while it trains, as SDR's step-0 runs do), carried to every later step in the
checkpoint's method state (``state_dict`` / ``load_state_dict``), and grown by the new classes at each step. After
its step a class's prototype is frozen: at step t only the new classes appear in the masks (old ones are
background, which is skipped at t > 0).

Where this differs from the released code (D @8638296), on purpose:

- Per-class gathers select whole pixels from pixel-major features (``wilson_ray.prototypes``). The released
  ``.view(C, -1)`` of a channel-major boolean selection (D ``train.py:474``, ``loss.py:383``) is right only with one
  image per GPU, and the PM gather's ``.view(-1, C)`` (``loss.py:501``) always mixes channels.
- ℓ_att averages over the classes present (the released division by the class count sits inside the loop).
- Background is accumulated into P_0 at step 0 in both settings (released: never in overlap, so ℓ_att pulls
  background features to 0).
- ℓ_FS: the released Σ_k exp(f̂_k) / Σ_k f̂_k falls as activations grow or spread, so it does not sparsify. Here
  ℓ_FS is the per-pixel L1/L2 ratio of the class-max-normalised features, divided by √D (in [1/√D, 1]): invariant
  to the features' scale, it falls only when activation concentrates in fewer channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from wilson_ray import losses, prototypes
from wilson_ray.methods.base import Batch, Context, Method
from wilson_ray.methods.ce_step0 import CEStepZero
from wilson_ray.methods.mib import MIB_RECIPE


@dataclass
class SDRParams:
    kd_weight: float = 100.0  # loss_kd (D argparser preset)
    kd_alpha: float = 1.0  # MiB's α on the teacher's logits
    pm_weight: float = 0.01  # prototype matching
    att_weight: float = 1e-3  # contrastive attraction
    rep_weight: float = 1e-3  # contrastive repulsion
    fs_weight: float = 1e-3  # feature sparsification
    init_balanced: bool = False  # SDR does not use MiB's balanced init


def prototype_matching_loss(
    f: torch.Tensor, old_pred: torch.Tensor, gt: torch.Tensor, protos: torch.Tensor, num_old: int
) -> torch.Tensor:
    """ℓ_PM: on GT-background pixels, for each old foreground class c the old model predicts there, μ_c = batch
    mean of f over those pixels; mean over those classes of mean_k (μ_c,k − P_c,k)². Labels at f's resolution."""
    labels = torch.where(gt == 0, old_pred, torch.full_like(old_pred, prototypes.IGNORE_INDEX))
    labels = torch.where((labels > 0) & (labels < num_old), labels, torch.full_like(labels, prototypes.IGNORE_INDEX))
    mu, present = prototypes.class_means(f, labels, num_old)
    if not present.any():
        return f.sum() * 0.0
    return ((mu[present] - protos[:num_old][present].to(mu.dtype)) ** 2).mean()


def attraction_loss(f: torch.Tensor, gt: torch.Tensor, protos: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """ℓ_att: for each GT class c present (background included) whose prototype exists, mean over its pixels of
    mean_k (f_ik − P_c,k)²; mean over those classes."""
    x = prototypes.pixel_features(f.float())
    y = gt.reshape(-1)
    keep = (y < protos.shape[0]) & (counts[y.clamp_max(protos.shape[0] - 1)] > 0)
    if not keep.any():
        return f.sum() * 0.0
    x, y = x[keep], y[keep]
    per_pixel = ((x - protos[y].to(x.dtype)) ** 2).mean(1)
    per_class = torch.zeros(protos.shape[0], device=x.device).index_add_(0, y, per_pixel)
    n = torch.bincount(y, minlength=protos.shape[0]).float()
    present = n > 0
    return (per_class[present] / n[present]).mean()


def repulsion_loss(f: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ℓ_rep: mean over ordered pairs c ≠ c′ of GT classes present of 1/‖μ_c − μ_c′‖₂ (batch class means)."""
    mu, present = prototypes.class_means(f, gt, num_classes)
    mu = mu[present]
    k = mu.shape[0]
    if k < 2:
        return f.sum() * 0.0
    dist = torch.cdist(mu[None], mu[None])[0]
    off = ~torch.eye(k, dtype=torch.bool, device=mu.device)
    return (1.0 / dist[off].clamp_min(1e-6)).mean()


def sparsity_loss(f: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ℓ_FS (corrected, see the module docstring): f̂ = max(f, 0) ÷ the maximum of f over the batch pixels (and
    channels) of the same GT class; per pixel ‖f̂‖₁ / (‖f̂‖₂ · √D); mean over labelled pixels."""
    x = prototypes.pixel_features(f.float()).clamp_min(0)
    y = gt.reshape(-1)
    keep = y < num_classes
    x, y = x[keep], y[keep]
    if x.shape[0] == 0:
        return f.sum() * 0.0
    peak = torch.zeros(num_classes, device=x.device).scatter_reduce(0, y, x.amax(1), "amax", include_self=True)
    x = x / peak[y].clamp_min(1e-6)[:, None]
    ratio = x.sum(1) / (torch.linalg.vector_norm(x, dim=1) * math.sqrt(x.shape[1])).clamp_min(1e-6)
    return ratio.mean()


class SDR(Method):
    name = "sdr"
    Params = SDRParams
    step0 = CEStepZero  # MiB's code, which both start from, trains step 0 with softmax CE
    recipe = MIB_RECIPE  # their scripts' step-t recipe is MiB's (30 epochs, lr 0.001, one LR, poly)

    def __init__(self, params: SDRParams, task, step: int, no_mask: bool = False):
        super().__init__(params, task, step, no_mask)
        self.prototypes: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def on_model_ready(self, model) -> None:
        if self.p.init_balanced:
            model.init_balanced_()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The bank of the previous step (or of this one, on resume), grown to this step's classes."""
        if "prototypes" not in state:
            from wilson_ray.errors import UserError

            raise UserError(
                f"sdr step {self.step}: the step {self.step - 1} checkpoint carries no prototype bank, "
                "expected one written by SDR's step 0 (the shared softmax-CE step 0) or an SDR step"
            )
        self.prototypes, self.counts = prototypes.grown(state["prototypes"], state["counts"], self.num_classes)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.prototypes is None else {"prototypes": self.prototypes, "counts": self.counts}

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        size = batch.images.shape[-2:]
        out = ctx.net(batch.images, logits=True, upsample=False)
        old = ctx.old_model(batch.images, upsample=False)
        up = lambda t: torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        s, s_old = up(out.logits), up(old.logits)
        f = out.features
        if self.prototypes.device != f.device:
            self.prototypes, self.counts = self.prototypes.to(f.device), self.counts.to(f.device)
        gt = prototypes.downsample_labels(batch.masks, f.shape[-2:])
        old_pred = prototypes.downsample_labels(s_old.argmax(1), f.shape[-2:])
        terms = {
            "unce": losses.unbiased_ce_loss(s, batch.masks, self.num_old),
            "unkd": self.p.kd_weight * losses.unbiased_kd_loss(s, s_old, alpha=self.p.kd_alpha),
            "pm": self.p.pm_weight * prototype_matching_loss(f, old_pred, gt, self.prototypes, self.num_old),
            "att": self.p.att_weight * attraction_loss(f, gt, self.prototypes, self.counts),
            "rep": self.p.rep_weight * repulsion_loss(f, gt, self.num_classes),
            "fs": self.p.fs_weight * sparsity_loss(f, gt, self.num_classes),
        }
        # Only this step's classes accumulate (background holds old classes at t > 0 and is skipped).
        prototypes.update_prototypes(self.prototypes, self.counts, f, gt, skip=(0,))
        return terms


METHODS = (SDR,)
