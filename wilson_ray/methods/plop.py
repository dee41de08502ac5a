"""PLOP (Douillard et al., CVPR'21): local POD distillation of six maps + entropy pseudo-labels of the old classes
on background pixels (baselines.md §1).

- Step 0: the softmax-CE step 0 shared with SDR (``ce_step0``), cached apart from WILSON's BCE step 0.
- Step t: L = ℓ_CE + ℓ_POD. ℓ_CE is plain softmax CE on pseudo-labelled masks, each image weighted by ν_b;
  ℓ_POD distils the pre-activation residual sums of the four stages' last blocks, the head output and the logits
  (the new model's background absorbing the new channels), at scales {1, 2, 4}, × √(|C|/|C^t|).
- Before training: one pass of the old model over the step's (augmented) training data gives per-class entropy
  thresholds τ_c, cached per step (``pass_cache``) so every sweep trial of the step reuses them.
- MiB's balanced init of the new classifier.

Recipe (presets, ``methods.plop.incremental``): PLOP's scripts, 30 epochs, lr 0.001 at step t (0.01 at step 0),
one LR for all groups, poly 0.9, Nesterov SGD, wd 1e-4 (P ``scripts/voc/plop_15-5.sh``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from wilson_ray.data.memory import MemoryParams
from wilson_ray.losses import IGNORE_INDEX
from wilson_ray.methods.base import Batch, Context, MemoryMethod, split_memory
from wilson_ray.methods.ce_step0 import CEStepZero
from wilson_ray.methods.mib import MIB_RECIPE
from wilson_ray.pass_cache import cached_pass

RELEASED_BINS = 100  # P train.py: 100 bins on [0, 1]
MEDIAN_BINS = 4096  # the exact-median switch: bins over [0, max u], i.e. ~5e-6 wide for 15-5


@dataclass
class PLOPParams(MemoryParams):
    pod_weight: float = 0.01  # the five feature maps (P pod_factor)
    pod_logits_weight: float = 0.0005  # the logits map (P pod_options logits factor)
    pod_scales: list[int] = field(default_factory=lambda: [1, 2, 4])
    pod_class_factor: bool = True  # × √(|C|/|C^t|) (2.05 for 15-5, 1.45 for 10-10)
    pseudo_labels: bool = True  # entropy pseudo-labels of old classes on GT-background pixels
    threshold_floor: float = 0.001  # τ_c = max(median_c, floor)
    # "released": P's median loop (sums bin indices, not counts; baselines.md §1); "median": the exact median
    threshold_mode: Literal["released", "median"] = "released"
    background_weight: bool = True  # ν_b = accepted / GT-background pixels per image on ℓ_CE
    init_balanced: bool = True


def entropy(p: torch.Tensor, num_classes: int) -> torch.Tensor:
    """PLOP's entropy as coded [B,H,W]: u = −(1/log C_old)·mean_c p log p, divided again by log C (C: every class
    of the step), so u ≤ 1/(C_old·log C)."""
    c_old = p.shape[1]
    ent = -(p * torch.log(p.clamp_min(1e-8))).mean(1) / math.log(c_old)
    return ent / math.log(num_classes)


def released_threshold(hist: torch.Tensor) -> float:
    """τ of one class from its 100-bin histogram of u on [0, 1], by the released median loop: the running sum adds
    the bin *index* instead of its count, so the loop stops at the first bin b with running ≤ half ≤ running +
    count_b, and τ = b/100 + (half − running)/count_b · 0.01; ∞ when no bin qualifies (an empty bin never does:
    the released code would divide by zero there too)."""
    half = float(hist.sum()) / 2
    running = 0.0
    width = 1.0 / len(hist)
    for b, count in enumerate(hist.tolist()):
        if count > 0 and running <= half <= running + count:
            return b * width + (half - running) / count * width
        running += b  # the quirk: the index, not the count
    return math.inf


def median_threshold(hist: torch.Tensor, high: float) -> float:
    """The median of u from a fine histogram on [0, high] (linear inside the median bin)."""
    total = float(hist.sum())
    cum = torch.cumsum(hist.double(), 0)
    b = int(torch.searchsorted(cum, torch.tensor(total / 2, dtype=cum.dtype)).clamp_max(len(hist) - 1))
    before = float(cum[b - 1]) if b > 0 else 0.0
    width = high / len(hist)
    return b * width + (total / 2 - before) / max(float(hist[b]), 1e-12) * width


def thresholds_from_histograms(hist: torch.Tensor, mode: str, floor: float, high: float) -> torch.Tensor:
    """τ [C_old] = max(median_c, floor) per predicted class; a class never predicted gets the floor."""
    out = torch.full((hist.shape[0],), floor, dtype=torch.float64)
    for c in range(hist.shape[0]):
        if hist[c].sum() > 0:
            tau = released_threshold(hist[c]) if mode == "released" else median_threshold(hist[c], high)
            out[c] = max(tau, floor)
    return out.float()


def pod_embedding(x: torch.Tensor, scales: list[int]) -> torch.Tensor:
    """Local POD embedding Φ [B,K] of a map [B,C,H,W]: square it, cut it into s×s tiles of side ⌊H/s⌋×⌊W/s⌋ for each
    scale s (the remainder rows/columns are left out, as the released slicing does), average each tile over its
    width and over its height, and concatenate everything."""
    x = x.float().pow(2)
    b, c, h, w = x.shape
    parts = []
    for s in scales:
        th, tw = h // s, w // s
        if th == 0 or tw == 0:
            continue
        t = x[:, :, : s * th, : s * tw].reshape(b, c, s, th, s, tw)
        parts.append(t.mean(5).reshape(b, -1))  # width-pooled: [B,C,s,th,s]
        parts.append(t.mean(3).reshape(b, -1))  # height-pooled: [B,C,s,s,tw]
    return torch.cat(parts, dim=1)


def pod_loss(new: torch.Tensor, old: torch.Tensor, scales: list[int]) -> torch.Tensor:
    """Batch mean of ‖Φ_old − Φ_new‖₂ for one map."""
    return torch.linalg.vector_norm(pod_embedding(new, scales) - pod_embedding(old.detach(), scales), dim=1).mean()


def absorbed_logits(s: torch.Tensor, num_old: int) -> torch.Tensor:
    """The new model's old channels with background absorbing the new ones: [s_0 + Σ_{C^t} s_c, s_1..s_{C_old−1}]."""
    return torch.cat([s[:, :1] + s[:, num_old:].sum(1, keepdim=True), s[:, 1:num_old]], dim=1)


def pseudo_label(
    masks: torch.Tensor, s_old: torch.Tensor, thresholds: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [B,H,W], ν [B]): on GT-background pixels the old model's argmax ĉ (0 included) where u < τ_ĉ, else
    255; other pixels keep their label. ν_b = accepted background pixels / (background pixels + 1e-6) as
    released (an image without background pixels gets weight 0)."""
    p = torch.softmax(s_old.float(), dim=1)
    u = entropy(p, num_classes)
    c_hat = p.argmax(1)
    bg = masks == 0
    accept = bg & (u < thresholds.to(u.device)[c_hat])
    labels = torch.where(bg, torch.where(accept, c_hat, torch.full_like(masks, IGNORE_INDEX)), masks)
    nu = accept.flatten(1).sum(1).float() / (bg.flatten(1).sum(1).float() + 1e-6)
    return labels, nu


class PLOP(MemoryMethod):
    name = "plop"
    Params = PLOPParams
    step0 = CEStepZero  # MiB's code, which both start from, trains step 0 with softmax CE
    recipe = MIB_RECIPE  # their scripts' step-t recipe is MiB's (30 epochs, lr 0.001, one LR, poly)

    def __init__(self, params: PLOPParams, task, step: int, no_mask: bool = False):
        super().__init__(params, task, step, no_mask)
        self.thresholds: torch.Tensor | None = None

    def on_model_ready(self, model) -> None:
        if self.p.init_balanced:
            model.init_balanced_()

    def before_training(self, ctx: Context, loader: Any) -> None:
        """τ_c from one pass of the old model over the step's training data (cached per step)."""
        if not self.p.pseudo_labels:
            return
        settings = {"mode": self.p.threshold_mode, "floor": self.p.threshold_floor}
        result = cached_pass(
            ctx.cache_dir,
            ctx.pass_key,
            "plop-thresholds",
            settings,
            lambda: {"thresholds": self.compute_thresholds(ctx, loader)},
        )
        self.thresholds = result["thresholds"]

    @torch.no_grad()
    def compute_thresholds(self, ctx: Context, loader: Any) -> torch.Tensor:
        """Per predicted old class, the histogram of u over GT-background pixels, then its median (released loop or
        exact), floored."""
        released = self.p.threshold_mode == "released"
        bins = RELEASED_BINS if released else MEDIAN_BINS
        high = 1.0 if released else 1.0 / (self.num_old * math.log(self.num_classes))
        hist = None
        for batch in loader:
            s_old = self.old_outputs(ctx, batch.images, upsample=True).logits.float()
            p = torch.softmax(s_old, 1)
            u, c_hat = entropy(p, self.num_classes), p.argmax(1)
            bg = batch.masks == 0
            u, c_hat = u[bg], c_hat[bg]
            idx = (u / high * bins).long().clamp(0, bins - 1)
            h = torch.bincount(c_hat * bins + idx, minlength=self.num_old * bins).view(self.num_old, bins)
            hist = h if hist is None else hist + h
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(hist)
        return thresholds_from_histograms(hist.cpu(), self.p.threshold_mode, self.p.threshold_floor, high)

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """ν-weighted CE on pseudo-labelled masks + local POD over the six maps; with a memory (docs/method.md §9),
        + memory_weight · ℓ_MEM on the memory images (at the logits' resolution, as the old model's targets)."""
        size = batch.images.shape[-2:]
        images, n = self.with_memory(batch)
        out = ctx.net(images, logits=True, upsample=False, maps=True)
        old = ctx.old_model(images, upsample=False, maps=True)
        # CE and POD stay on the new images (out/old cut to the first n): the pseudo-labels and ν need the new
        # images' masks, the POD weights are calibrated for them, and on the memory images ℓ_MEM already pulls the
        # new model to the old one, so distilling there too would count them twice.
        (logits, s_mem), (old_logits, s_old_mem) = split_memory(out.logits, n), split_memory(old.logits, n)
        s = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).float()
        masks, nu = batch.masks, torch.ones(batch.masks.shape[0], device=s.device)
        if self.p.pseudo_labels:
            s_old_up = F.interpolate(old_logits.float(), size=size, mode="bilinear", align_corners=False)
            masks, nu_pl = pseudo_label(batch.masks, s_old_up, self.thresholds, self.num_classes)
            if self.p.background_weight:
                nu = nu_pl
        ce = F.cross_entropy(s, masks, ignore_index=IGNORE_INDEX, reduction="none")
        ce = (ce * nu[:, None, None]).mean()
        factor = math.sqrt(self.num_classes / self.num_new) if self.p.pod_class_factor else 1.0
        scales = list(self.p.pod_scales)
        pod = sum(
            self.p.pod_weight * pod_loss(split_memory(a, n)[0], split_memory(b, n)[0], scales)
            for a, b in zip(out.maps, old.maps)
        )
        pod = pod + self.p.pod_logits_weight * pod_loss(absorbed_logits(logits, self.num_old), old_logits, scales)
        terms = {"ce": ce, "pod": pod * factor / (len(out.maps) + 1)}
        if s_mem is not None:
            terms.update(self.memory_terms(s_mem, s_old_mem))
        return terms

    def state_dict(self) -> dict[str, Any]:
        """The memory's entries (``MemoryMethod``) and this step's thresholds τ (for a resumed step)."""
        state = super().state_dict()
        return state if self.thresholds is None else {**state, "thresholds": self.thresholds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The carried memory, and τ of a resumed step."""
        super().load_state_dict(state)
        # The previous step's thresholds are over its own old classes; only a resumed step keeps them.
        if "thresholds" in state and state["thresholds"].numel() == self.num_old:
            self.thresholds = state["thresholds"]


METHODS = (PLOP,)
