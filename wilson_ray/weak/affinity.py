"""AffinityNet and the random walk (Ahn & Kwak, CVPR'18, "PSA"), the last two steps of SEAM's masks
(baselines.md §4 "Masks" steps 3-4).

AffinityNet maps an image to stride-8 features f; the affinity of two pixels within ``radius`` is
a_ij = exp(−mean_d |f_di − f_dj|). It learns from CRF seeds (0 = confident background, k = confident class k,
255 = unsure): pairs of the same background label pull together (bg⁺), pairs of the same foreground class too
(fg⁺), pairs of different labels push apart (neg); loss = bg⁺/4 + fg⁺/4 + neg/2. At inference the affinities
become a transition matrix T = D⁻¹(A^β) that propagates the CAMs: CAM ← CAM · T^(2^logt).

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """Half of the disc of ``radius`` (each unordered pair once): (dy, dx) with dy > 0, or dy = 0 and dx > 0,
    and dy² + dx² < radius² (PSA's neighbourhood; radius 5 gives 34 offsets)."""
    return [
        (dy, dx)
        for dy in range(radius)
        for dx in range(-radius + 1, radius)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius
    ]


def pair_indices(h: int, w: int, radius: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (from [P], to [P]) of every pixel pair of an h×w map within ``radius`` (both inside the map)."""
    rows = torch.arange(h, device=device).view(-1, 1)
    cols = torch.arange(w, device=device).view(1, -1)
    src, dst = [], []
    for dy, dx in pair_offsets(radius):
        r2, c2 = rows + dy, cols + dx
        inside = (r2 < h) & (c2 >= 0) & (c2 < w)
        inside = inside.expand(h, w)
        src.append((rows * w + cols).expand(h, w)[inside])
        dst.append((r2 * w + c2).expand(h, w)[inside])
    return torch.cat(src), torch.cat(dst)


def pair_affinities(features: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """a_ij = exp(−mean over channels of |f_i − f_j|) [B,P] for the pairs (``src``, ``dst``) of ``features``
    [B,D,h,w]."""
    flat = features.flatten(2)
    return torch.exp(-(flat[:, :, src] - flat[:, :, dst]).abs().mean(1))


def affinity_labels(
    seeds: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, ignore: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg⁺, fg⁺, neg) bool [B,P] of the pairs from seed labels [B,h,w] at the feature size: both background;
    both the same foreground class; different labels. Pairs touching an ``ignore`` pixel are in none."""
    flat = seeds.flatten(1)
    a, b = flat[:, src], flat[:, dst]
    known = (a != ignore) & (b != ignore)
    same = (a == b) & known
    return same & (a == 0), same & (a != 0), (a != b) & known


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """PSA's affinity loss terms: bg⁺ = mean of −log(a) over bg⁺ pairs, fg⁺ likewise, neg = mean of
    −log(1 − a) over neg pairs; weighted 1/4, 1/4, 1/2."""
    eps = 1e-5

    def mean_over(term: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        pairs = pairs.to(term.dtype)
        return (term * pairs).sum() / (pairs.sum() + eps)

    return {
        "aff_bg": mean_over(-torch.log(aff + eps), bg_pos) / 4,
        "aff_fg": mean_over(-torch.log(aff + eps), fg_pos) / 4,
        "aff_neg": mean_over(-torch.log(1.0 + eps - aff), neg) / 2,
    }


def transition_matrix(aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int, beta: float) -> torch.Tensor:
    """T [n,n] of one image: A = symmetric pair affinities ``aff`` [P] plus the identity, raised elementwise to
    ``beta``, each column divided by its sum (PSA's ``trans_mat``)."""
    a = torch.eye(n, dtype=aff.dtype, device=aff.device)
    a[src, dst] = aff
    a[dst, src] = aff
    a = a.pow(beta)
    return a / a.sum(0, keepdim=True)


def random_walk(scores: torch.Tensor, transition: torch.Tensor, logt: int) -> torch.Tensor:
    """Propagate ``scores`` [C,h,w] by T^(2^logt) (T squared ``logt`` times): vec(scores) · T, reshaped."""
    t = transition
    for _ in range(logt):
        t = t @ t
    c, h, w = scores.shape
    return (scores.reshape(c, -1).to(t.dtype) @ t).view(c, h, w)


class AffinityNet(nn.Module):
    """PSA's AffinityNet on a ``wilson_ray.models`` backbone: 1×1 convs (no bias) of the conv4, conv5 and final
    stage features to 64, 128 and 256 channels, each ELU, concatenated and mixed by a 1×1 conv (448 → 448) + ELU,
    all at the conv4 resolution (stride 8). ``forward`` returns those features."""

    def __init__(self, backbone: nn.Module, channels: tuple[int, int, int] = (64, 128, 256)):
        super().__init__()
        self.backbone = backbone
        stages = backbone.stage_channels
        self.f8_3 = nn.Conv2d(stages["conv4"], channels[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(stages["conv5"], channels[1], 1, bias=False)
        self.f8_5 = nn.Conv2d(stages["out"], channels[2], 1, bias=False)
        self.f9 = nn.Conv2d(sum(channels), sum(channels), 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)  # PSA's gain: large enough that exp(−|Δf|) separates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.backbone.forward_features(x)
        size = d["conv4"].shape[-2:]
        parts = []
        for conv, key in ((self.f8_3, "conv4"), (self.f8_4, "conv5"), (self.f8_5, "out")):
            f = d[key]
            if f.shape[-2:] != size:  # an output stride other than 8 leaves the deep stages smaller
                f = F.interpolate(f, size, mode="bilinear", align_corners=False)
            parts.append(F.elu(conv(f)))
        return F.elu(self.f9(torch.cat(parts, 1)))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.f8_3, self.f8_4, self.f8_5, self.f9) for p in m.parameters()]


__all__ = [
    "AffinityNet",
    "affinity_labels",
    "affinity_loss",
    "pair_affinities",
    "pair_indices",
    "pair_offsets",
    "random_walk",
    "transition_matrix",
]
