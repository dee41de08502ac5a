"""Losses of WILSON (method.md §3.1–§3.7) and of the MiB baselines (§3.10).

Shapes: s new-model logits [B,C,h,w]; s_old old-model logits [B,C_old,h,w]; z localizer logits [B,C,h,w];
f, f_old body features; labels y float multi-hot [B,C-1], entry j for internal class j+1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def bce_step0_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Step-0 BCE (method.md §3.1): Σ_c BCEWithLogits(s_c, 1[c = label]) per pixel, mean over the pixels whose
    target is not 255. ``logits`` [B,C,H,W], ``target`` [B,H,W] integer labels."""
    valid = target != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, target, 0).long(), logits.shape[1]).permute(0, 3, 1, 2)
    per_pixel = F.binary_cross_entropy_with_logits(logits, onehot.to(logits.dtype), reduction="none").sum(1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def ngwp_focal_scores(z: torch.Tensor, eps: float = 1.0, gamma: float = 3.0, lam: float = 0.01) -> torch.Tensor:
    """Image-level class scores ŷ = ŷ_nGWP + ŷ_FOC [B,C] (method.md §3.2).

    With m = softmax_c(z): ŷ_nGWP,c = Σ_i m_ci z_ci / (ε + Σ_i m_ci) and
    ŷ_FOC,c = (1 − mean_i m_ci)^γ · log(λ + mean_i m_ci).
    """
    z = z.flatten(2).float()
    m = torch.softmax(z, dim=1)
    ngwp = (m * z).sum(-1) / (eps + m.sum(-1))
    m_mean = m.mean(-1)
    focal = (1.0 - m_mean).pow(gamma) * torch.log(lam + m_mean)
    return ngwp + focal


def _image_label_bce(scores: torch.Tensor, labels: torch.Tensor, num_new: int, all_classes: bool) -> torch.Tensor:
    """Multi-label soft margin: BCE of the foreground scores, mean over batch and the selected classes."""
    fg = scores[:, 1:]
    labels = labels.to(fg.dtype)
    if not all_classes:
        fg, labels = fg[:, -num_new:], labels[:, -num_new:]
    return F.binary_cross_entropy_with_logits(fg, labels)


def classification_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    num_new: int,
    eps: float = 1.0,
    gamma: float = 3.0,
    lam: float = 0.01,
    all_classes: bool = False,
) -> torch.Tensor:
    """ℓ_CLS (method.md §3.2): BCEWithLogits of the nGWP+focal scores against the image labels, averaged
    over the batch and the last ``num_new`` classes (every foreground class when ``all_classes``, ``no_mask``)."""
    return _image_label_bce(ngwp_focal_scores(z, eps, gamma, lam), labels, num_new, all_classes)


def gap_classification_loss(
    z: torch.Tensor, labels: torch.Tensor, num_new: int, all_classes: bool = False
) -> torch.Tensor:
    """ℓ_CLS with plain global average pooling of z instead of nGWP (the code's GAP alternative in §3.2),
    used by the ``cam`` baseline."""
    return _image_label_bce(z.float().mean(dim=(2, 3)), labels, num_new, all_classes)


def localization_prior_loss(z: torch.Tensor, s_old: torch.Tensor) -> torch.Tensor:
    """ℓ_LOC (method.md §3.3): mean over B×C_old×h×w of BCEWithLogits(z_c, σ(s_old,c)), old channels and
    background; the old-model target is detached."""
    c_old = s_old.shape[1]
    target = torch.sigmoid(s_old.detach().float())
    return F.binary_cross_entropy_with_logits(z[:, :c_old].float(), target)


def encoder_distillation_loss(f: torch.Tensor, f_old: torch.Tensor) -> torch.Tensor:
    """ℓ_ENC (method.md §3.4): mean over all elements (channels too) of (f − f_old)², f_old detached."""
    return F.mse_loss(f.float(), f_old.detach().float())


def segmentation_loss(s: torch.Tensor, q_hat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ℓ_SEG (method.md §3.6): ℓ_b = mean over pixels of Σ_c BCEWithLogits(s_c, q̂_c), then
    Σ_b w_b ℓ_b / (Σ_b w_b + 1e−5)."""
    per_image = F.binary_cross_entropy_with_logits(s.float(), q_hat.detach().float(), reduction="none")
    per_image = per_image.sum(1).mean(dim=(1, 2))
    weight = weight.detach().to(per_image.dtype)
    return (weight * per_image).sum() / (weight.sum() + 1e-5)


def self_supervised_loss(
    z: torch.Tensor,
    refined: torch.Tensor,
    labels: torch.Tensor,
    fg_cutoff: float = 0.6,
    bg_cutoff: float = 0.7,
    low_cutoff: float = 0.2,
) -> torch.Tensor:
    """ℓ_SSS (method.md §3.7 steps 2–5) on the train-mode localizer logits z.

    ``refined`` [B,C,h,w] is the PAMR-refined softmax with foreground channels multiplied by the labels.
    Pseudo-GT: pixel i is assigned to c if refined_ci > max(κ_c · max_i refined_ci, low_cutoff), κ = bg_cutoff
    for background and fg_cutoff otherwise; pixels assigned to several classes are cleared, unassigned ones
    ignored. Loss per image: mean over all h·w pixels of w_c·CE(softmax_c z, pseudo-GT) with
    w_c = (N − N_c)/(1 + N); images whose number of present pseudo classes ≠ #labels + 1 count as 0; mean over B.
    """
    refined = refined.detach().float()
    b, c = refined.shape[:2]
    peak = refined.amax(dim=(2, 3), keepdim=True)
    kappa = torch.full((1, c, 1, 1), fg_cutoff, dtype=refined.dtype, device=refined.device)
    kappa[:, 0] = bg_cutoff
    assigned = refined > torch.clamp(kappa * peak, min=low_cutoff)
    assigned &= assigned.sum(1, keepdim=True) == 1  # clears ambiguous pixels

    counts = assigned.sum(dim=(2, 3)).to(refined.dtype)  # N_c [B,C]
    total = counts.sum(1, keepdim=True)  # N, assigned pixels only
    class_weight = (total - counts) / (1.0 + total)

    has_label = assigned.any(1)  # [B,h,w]
    target = assigned.to(torch.uint8).argmax(1)  # the single assigned class where has_label
    log_p = torch.log_softmax(z.float(), dim=1)
    ce = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    pixel_weight = class_weight.gather(1, target.flatten(1)).view_as(ce)
    per_image = (ce * pixel_weight * has_label).mean(dim=(1, 2))

    gate = (counts > 0).sum(1) == labels.detach().round().sum(1).long() + 1
    return (per_image * gate).sum() / b


def unbiased_ce_loss(s: torch.Tensor, target: torch.Tensor, num_old: int) -> torch.Tensor:
    """MiB unbiased cross-entropy (method.md §3.10) for pixel-labelled new steps.

    Background log-probability log p̃_b = logsumexp over the ``num_old`` old channels (background included)
    − logsumexp over all; new class k: s_k − logsumexp over all. Old-class labels become background; NLL
    with 255 ignored, averaged over all pixels (ignored ones included, as MiB does).
    """
    s = s.float()
    den = torch.logsumexp(s, dim=1, keepdim=True)
    log_bkg = torch.logsumexp(s[:, :num_old], dim=1, keepdim=True) - den
    # Channels 1..num_old-1 are never targets after the remap; they are kept only to index by class id.
    log_p = torch.cat([log_bkg, s[:, 1:] - den], dim=1)
    target = torch.where(target < num_old, torch.zeros_like(target), target).long()
    nll = F.nll_loss(log_p, target, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.mean()


def unbiased_kd_loss(
    s: torch.Tensor, s_old: torch.Tensor, temperature: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """MiB unbiased knowledge distillation (method.md §3.10).

    Teacher q = softmax(α · s_old / T) over the C_old old channels; student log-probabilities over all C channels
    of s / T, with background's taken as logsumexp over {background} ∪ new channels. Per pixel
    −(1/C_old)[q_b log p̃_b + Σ_old fg q_c log p_c], mean over pixels. MiB's own form is T = 1 with its ``alpha``
    scaling the teacher's logits only; T = α = 1 reproduces MiB's published runs.
    """
    c_old = s_old.shape[1]
    s = s.float() / temperature
    q = torch.softmax(alpha * s_old.detach().float() / temperature, dim=1)
    den = torch.logsumexp(s, dim=1, keepdim=True)
    log_bkg = torch.logsumexp(torch.cat([s[:, :1], s[:, c_old:]], dim=1), dim=1, keepdim=True) - den
    log_p = torch.cat([log_bkg, s[:, 1:c_old] - den], dim=1)
    return -(q * log_p).sum(1).mean() / c_old


def kd_loss(s: torch.Tensor, s_old: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Plain KD of LwF/ILT (method.md §3.10): student log-softmax over the old channels only of s / T,
    teacher softmax(s_old / T); −mean over pixels and channels of q · log p."""
    c_old = s_old.shape[1]
    log_p = torch.log_softmax(s[:, :c_old].float() / temperature, dim=1)
    q = torch.softmax(s_old.detach().float() / temperature, dim=1)
    return -(q * log_p).mean()
