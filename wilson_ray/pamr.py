"""PAMR, parameter-free mask refinement (method.md §3.8), vectorised as one gather per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The official code de-normalises with 0.4069 (a typo for ImageNet's 0.406); WILSON's numbers were produced
# with it, so PAMR affinities here use the same value.
PAMR_MEAN = (0.485, 0.456, 0.4069)
PAMR_STD = (0.229, 0.224, 0.225)


def denormalize_and_resize(images_normalized: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Undo ImageNet normalisation (with the official 0.4069 mean, §3.8) and resize to ``size`` = (h, w)
    bilinearly with align_corners=True (§3.7 step 1), so PAMR runs at feature resolution."""
    x = images_normalized.float()
    mean = x.new_tensor(PAMR_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(PAMR_STD).view(1, 3, 1, 1)
    x = x * std + mean
    return F.interpolate(x, size=tuple(int(v) for v in size), mode="bilinear", align_corners=True)


def _stencil_index(h: int, w: int, dilations: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices [K, h, w] of the 3x3 stencil at every dilation (K = 9·len(dilations)).

    Clamping coordinates to the image is exactly replicate padding, so no padded copy is needed.
    Also returns a [K] bool mask of the non-centre samples (the 8·len(dilations) neighbours).
    """
    d = torch.as_tensor(list(dilations), device=device).view(-1, 1, 1)
    step = torch.tensor([-1, 0, 1], device=device)
    dy = (d * step.view(1, 3, 1)).expand(-1, 3, 3).reshape(-1)
    dx = (d * step.view(1, 1, 3)).expand(-1, 3, 3).reshape(-1)
    rows = (torch.arange(h, device=device).view(1, h, 1) + dy.view(-1, 1, 1)).clamp(0, h - 1)
    cols = (torch.arange(w, device=device).view(1, 1, w) + dx.view(-1, 1, 1)).clamp(0, w - 1)
    return rows * w + cols, (dy != 0) | (dx != 0)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, K, h, w] samples of x at the flat stencil ``index`` [K, h, w]."""
    b, c, h, w = x.shape
    return x.flatten(2)[:, :, index.flatten()].view(b, c, *index.shape)


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12),
) -> torch.Tensor:
    """Refine ``masks`` [B,C,h,w] with PAMR (method.md §3.8) on ``image`` [B,3,h,w] (de-normalised, resized).

    Per RGB channel, σ_I = std over the 9·|dilations| stencil samples (centre repeated); raw affinity to each
    of the 8·|dilations| neighbours −|I_i − I_n| / (1e−8 + 0.1·σ_I), averaged over channels, softmax over the
    neighbours; then ``iterations`` times m_i ← Σ_n a_in m_n (centre excluded). No gradient flows.
    """
    if image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"pamr: image size {tuple(image.shape[-2:])} != mask size {tuple(masks.shape[-2:])}")
    with torch.no_grad():
        h, w = masks.shape[-2:]
        index, is_neighbour = _stencil_index(h, w, dilations, masks.device)
        refined = masks.float()
        if iterations <= 0:
            return refined.to(masks.dtype)
        img = image.float()
        samples = _gather(img, index)  # [B,3,K,h,w]
        sigma = samples.std(dim=2, keepdim=True)
        neighbours = samples[:, :, is_neighbour]
        affinity = -(img.unsqueeze(2) - neighbours).abs() / (1e-8 + 0.1 * sigma)
        affinity = torch.softmax(affinity.mean(1, keepdim=True), dim=2)  # [B,1,N,h,w]
        neighbour_index = index[is_neighbour]
        for _ in range(iterations):
            refined = (_gather(refined, neighbour_index) * affinity).sum(2)
        return refined.to(masks.dtype)
