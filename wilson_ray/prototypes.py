"""SDR's prototype bank (baselines.md §2): per-class running means of the body features f, and the per-class
gathers its losses need. Pure functions on tensors, vectorised over classes.

Gathers select pixels with a boolean mask on pixel-major features ([B,h,w,D] -> [N,D]), so a pixel's channels stay
together for any batch size; the released code reshaped a channel-major selection (``.view(C,-1)`` /
``.view(-1,C)``), which mixes channels with more than one image per GPU (and always, for the PM gather).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def downsample_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour labels [B,h,w] at feature resolution (SDR downsamples, it does not upsample f)."""
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()


def pixel_features(f: torch.Tensor) -> torch.Tensor:
    """[B,D,h,w] -> pixel-major [B·h·w, D]."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


def class_sums(f: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_{i∈c} f_i [C,D], m_c [C]) over the pixels of each class c < ``num_classes`` (others, 255 too, skipped).
    ``f`` [B,D,h,w], ``labels`` [B,h,w] at the same resolution."""
    x = pixel_features(f.float())
    y = labels.reshape(-1)
    keep = y < num_classes
    x, y = x[keep], y[keep]
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    return sums, counts


def class_means(f: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ_c [C,D], present [C] bool): batch mean of f over each class's pixels (zero rows where absent)."""
    sums, counts = class_sums(f, labels, num_classes)
    return sums / counts.clamp_min(1)[:, None], counts > 0


@torch.no_grad()
def update_prototypes(
    protos: torch.Tensor, counts: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, skip: tuple[int, ...] = ()
) -> None:
    """SDR's running prototype update, in place: P_c ← (Σ_{i∈c} f_i + n_c·P_c)/(n_c + m_c), n_c += m_c, for every
    class c present in ``labels`` except 255 and ``skip`` (f detached)."""
    sums, m = class_sums(f.detach(), labels, protos.shape[0])
    for c in skip:
        m[c] = 0
        sums[c] = 0
    n = counts.to(sums.dtype)
    seen = m > 0
    new = (sums + n[:, None] * protos.to(sums.dtype)) / (n + m).clamp_min(1)[:, None]
    protos[seen] = new[seen].to(protos.dtype)
    counts += m.to(counts.dtype)


def grown(protos: torch.Tensor, counts: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank extended with zero rows (count 0) for the classes a new step adds."""
    extra = num_classes - protos.shape[0]
    if extra <= 0:
        return protos.clone(), counts.clone()
    return (torch.cat([protos, protos.new_zeros(extra, protos.shape[1])]), torch.cat([counts, counts.new_zeros(extra)]))
