"""Pseudo-label targets from the localizer (method.md §3.5, §3.7 step 1) and the CAM baseline's targets.

All functions run without gradient; shapes as in losses.py (z̄ [B,C,h,w], labels [B,C-1], s_old [B,C_old,h,w]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wilson_ray.pamr import denormalize_and_resize, pamr


def _mask_foreground(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiply channels 1..C-1 by the image labels; background untouched, no renormalisation (§3.5 step 2)."""
    keep = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1).to(probs.dtype)
    return probs * keep[:, :, None, None]


def _compose_target(q: torch.Tensor, s_old: torch.Tensor, bkg_beta: float | None) -> torch.Tensor:
    """q̂ of §3.5 step 5: background min(σ(s_old,b), q_b) (or the β blend), σ(s_old) on old foreground
    channels, q on the new channels."""
    c_old = s_old.shape[1]
    p_old = torch.sigmoid(s_old.float())
    if bkg_beta is None:
        bkg = torch.minimum(p_old[:, :1], q[:, :1])
    else:
        bkg = (1.0 - bkg_beta) * p_old[:, :1] + bkg_beta * q[:, :1]
    return torch.cat([bkg, p_old[:, 1:c_old], q[:, c_old:]], dim=1)


@torch.no_grad()
def soft_pseudo_labels(
    z_bar: torch.Tensor,
    labels: torch.Tensor,
    s_old: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    bkg_beta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WILSON's soft pseudo-labels q̂ [B,C,h,w] and image validity weights w [B] (method.md §3.5 steps 1–6).

    m̄ = softmax(z̄ / T) over all C channels (T = 1 is the paper), foreground channels multiplied by the labels;
    hard label 1 wherever m̄_c equals the per-pixel max (ties all get 1); q = α·hard + (1 − α)·m̄; q̂ takes
    background min(σ(s_old,b), q_b) (or (1 − β)σ(s_old,b) + β q_b when ``bkg_beta`` = β), σ(s_old) on the other
    old classes and q on the new ones. w_b = 1 iff for every new class "positive mass in q" equals "in y".
    """
    m = _mask_foreground(torch.softmax(z_bar.float() / temperature, dim=1), labels)
    hard = (m == m.amax(dim=1, keepdim=True)).to(m.dtype)
    q = alpha * hard + (1.0 - alpha) * m
    q_hat = _compose_target(q, s_old, bkg_beta)

    c_old = s_old.shape[1]
    has_mass = q[:, c_old:].sum(dim=(2, 3)) > 0
    in_labels = labels[:, c_old - 1 :] > 0
    weight = (has_mass == in_labels).all(dim=1).to(q.dtype)
    return q_hat, weight


@torch.no_grad()
def localizer_refined_masks(
    z_bar: torch.Tensor,
    images_normalized: torch.Tensor,
    labels: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12),
) -> torch.Tensor:
    """Refined localizer masks for ℓ_SSS (method.md §3.7 step 1): softmax(z̄), PAMR at feature resolution on
    the de-normalised image resized to h×w, then foreground channels multiplied by the labels.
    ``iterations=0`` skips PAMR (the official run without ``--affinity``)."""
    probs = torch.softmax(z_bar.float(), dim=1)
    if iterations > 0:
        image = denormalize_and_resize(images_normalized, z_bar.shape[-2:])
        probs = pamr(image, probs, iterations=iterations, dilations=dilations)
    return _mask_foreground(probs, labels)


@torch.no_grad()
def cam_pseudo_labels(
    z_bar: torch.Tensor,
    labels: torch.Tensor,
    s_old: torch.Tensor,
    bkg_beta: float | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAM-baseline targets q̂ [B,C,h,w] and weights w [B] (all ones) from a GAP-trained localizer.

    Rule (ours; the paper gives none): for each present new class c the activation map relu(z̄_c) is
    normalised to [0, 1] by its per-image maximum (+ ``eps``); absent classes get 0. The localizer's background
    estimate is 1 − max over the new-class maps (1 where no new class is present) and enters q̂ exactly like q_b
    in §3.5 step 5 (min with σ(s_old,b), or the β blend); other old classes take σ(s_old).
    """
    c_old = s_old.shape[1]
    act = torch.relu(z_bar[:, c_old:].float())
    cam = act / (act.amax(dim=(2, 3), keepdim=True) + eps)
    cam = cam * labels[:, c_old - 1 :, None, None].to(cam.dtype)
    bkg = 1.0 - cam.amax(dim=1, keepdim=True) if cam.shape[1] else torch.ones_like(z_bar[:, :1].float())
    filler = torch.zeros_like(z_bar[:, 1:c_old].float())  # old channels: replaced by σ(s_old) below
    q = torch.cat([bkg, filler, cam], dim=1)
    return _compose_target(q, s_old, bkg_beta), torch.ones(z_bar.shape[0], device=z_bar.device)
