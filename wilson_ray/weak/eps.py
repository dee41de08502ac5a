"""EPS (Lee et al., CVPR'21; baselines.md §6): a classifier with K+1 CAM channels (the last one background)
trained with the soft margin on the foreground channels plus the saliency loss; masks by EPS's inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.weak.base import LearnerSchedule, WeakLearner, multiscale_flip
from wilson_ray.weak.cam import build_classifier_net, maps_to_mask, soft_margin_loss


@dataclass
class EpsParams(LearnerSchedule):
    epochs: int = 15  # EPS's 20k iterations of batch 8 over VOC's 10,582 training images
    tau: float = 0.4  # a labelled class is "valid" if this share of its pixels is salient (VOC script; argparse 0.5)
    lam: float = 0.5  # λ: weight of the foreground map in the saliency estimate
    bg_threshold: float = 0.2
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    flip: bool = True


def saliency_loss(
    cam: torch.Tensor, saliency: torch.Tensor, labels: torch.Tensor, tau: float, lam: float
) -> torch.Tensor:
    """EPS's saliency loss. p = softmax over the K+1 channels of ``cam`` [B,K+1,h,w]; S = ``saliency`` [B,1,H,W]
    nearest-resized to h×w. A labelled class k is valid when Σ round(p_k)·round(S) / Σ round(p_k) > τ;
    fg = Σ_valid p_k, bg = 1 − (p_bg + Σ_{labelled, invalid} p_k); loss = MSE(λ·fg + (1−λ)·bg, S)."""
    b, k1, h, w = cam.shape
    sal = F.interpolate(saliency.float(), size=(h, w), mode="nearest")
    p = torch.softmax(cam.float(), dim=1)
    p_fg, p_bg = p[:, :-1], p[:, -1:]
    hard = p_fg.detach().round()
    overlap = (hard * sal.round()).flatten(2).sum(-1) / (hard.flatten(2).sum(-1) + 1e-4)
    labelled = labels.float() > 0.5
    valid = (labelled & (overlap > tau)).float()[:, :, None, None]
    invalid = (labelled & ~(overlap > tau)).float()[:, :, None, None]
    fg = (p_fg * valid).sum(1, keepdim=True)
    bg = 1.0 - (p_bg + (p_fg * invalid).sum(1, keepdim=True))
    return F.mse_loss(lam * fg + (1.0 - lam) * bg, sal)


class EpsLearner(WeakLearner):
    name = "eps"
    Params = EpsParams
    extra_inputs = ("saliency",)

    def build_net(self, model_cfg) -> nn.Module:
        return build_classifier_net(model_cfg, self.num_classes + 1)

    def losses(self, net: nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        cam = net(batch.images)
        logits = cam.mean(dim=(2, 3))[:, :-1]
        return {
            "cls": soft_margin_loss(logits, batch.labels),
            "sal": saliency_loss(cam, batch.extras["saliency"], batch.labels, self.p.tau, self.p.lam),
        }

    @torch.no_grad()
    def infer_mask(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        maps = multiscale_flip(
            lambda x: torch.softmax(net(x).float(), dim=1)[:, :-1], image, self.p.scales, self.p.flip
        )
        return maps_to_mask(torch.stack(maps).sum(0)[0], labels, self.p.bg_threshold)
