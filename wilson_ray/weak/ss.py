"""SS, the single-stage WSSS net (Araslanov & Roth, CVPR'20; baselines.md §5): backbone -> ASPP, merged with a
shallow (conv3) skip, global cue injection (GCI) and a stochastic gate (ψ = 0.3), a two-conv decoder to K logits
plus a constant background logit 1. Losses: multi-label soft margin on nGWP + focal penalty (p = 3, λ = 0.01), and
from epoch ``pretrain_epochs`` on, the class-balanced CE on the PAMR pseudo-GT (10 iterations, dilations
{1,2,4,8,12,24}, cutoffs 0.6 / 0.7 / 0.2). The nGWP/focal scores, PAMR and the pseudo-GT loss are the toolkit's
WILSON functions (method.md §3.2, §3.7, §3.8) with SS's own settings.

Masks: softmax at 4 scales with flips, mean, foreground × labels, background raised to the power 3, argmax; the
dense CRF (t = 10) is optional (``crf``; off by default: which variant WILSON used is unknown, baselines.md §8).

Schedule (SS's VOC config): batch 16, 24 epochs, crop 321, SGD lr 1e-3 *constant* (``power: 0``), momentum 0.9,
wd 5e-4, ×1/×2/×10/×20.

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.losses import ngwp_focal_scores, self_supervised_loss
from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.head import DeepLabV3Head
from wilson_ray.models.norm import norm_act
from wilson_ray.models.weights import load_backbone_weights
from wilson_ray.pamr import pamr
from wilson_ray.weak.base import LearnerSchedule, WeakLearner, denormalize, multiscale_flip
from wilson_ray.weak.crf import dense_crf, require_crf
from wilson_ray.weak.frozen_bn import FrozenBNMixin, wants_frozen_bn


@dataclass
class SSParams(LearnerSchedule):
    epochs: int = 24
    lr: float = 1e-3
    batch_size: int = 16
    crop_size: int = 321
    power: float = 0.0  # SS's learning rate is constant (no schedule in its config)
    frozen_bn: bool | None = None  # None: frozen iff ImageNet weights are loaded (SS freezes ResNet-38's BN)
    psi: float = 0.3  # ψ of the stochastic gate
    skip_channels: int = 48  # the conv3 skip's width
    ngwp_eps: float = 1.0
    focal_p: float = 3.0
    focal_lambda: float = 0.01
    pretrain_epochs: int = 5  # epochs of classification loss alone before the pseudo-GT loss starts
    mask_loss_weight: float = 1.0
    pamr_iterations: int = 10
    pamr_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    cutoff_fg: float = 0.6
    cutoff_bg: float = 0.7
    cutoff_low: float = 0.2
    # masks
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    flip: bool = True
    bg_power: float = 3.0
    crf: bool = False
    crf_iterations: int = 10


class GlobalCueInjection(nn.Module):
    """GCI: AdaIN of the shallow features by the deep ones. The deep features [B,C,·,·] go through a 1×1 conv to 2C
    (+BN, ReLU) and a global max pool: per-channel (γ, β). The shallow features [B,C,h,w] go through a 1×1 conv and
    an affine-free BN, become ReLU(x·(1+γ) + β), then a 1×1 conv + BN + ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.deep = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.BatchNorm2d(2 * channels), nn.ReLU(inplace=True)
        )
        self.skip = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels, affine=False))
        self.out = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        attrs = self.deep(deep).flatten(2).amax(-1)
        gamma, beta = attrs.view(attrs.shape[0], 2, -1).unbind(1)
        x = self.skip(shallow)
        return self.out(F.relu(x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]))


def stochastic_gate(deep: torch.Tensor, shallow: torch.Tensor, psi: float, training: bool) -> torch.Tensor:
    """SS's stochastic gate. Training: per element, with probability 1 − ψ the rescaled deep feature
    (deep − ψ·shallow)/(1 − ψ), else the shallow one. Test: the deterministic (1 − ψ)·deep + ψ·shallow."""
    if not training:
        return (1.0 - psi) * deep + psi * shallow
    keep = torch.rand_like(deep) >= psi
    return torch.where(keep, (deep - psi * shallow) / max(1e-8, 1.0 - psi), shallow)


class SSNet(FrozenBNMixin, nn.Module):
    """Backbone -> ASPP (the toolkit's DeepLab-V3 head) -> upsampled to the conv3 skip (1×1 conv to 48 + BN + ReLU),
    concatenated, 3×3 conv + BN + ReLU (the merged map); GCI of the merged map by the ASPP output; the stochastic
    gate between the merged map and the GCI output;
    3×3 conv/BN/ReLU/dropout 0.5, 3×3 conv/BN/ReLU/dropout 0.1, 1×1 conv to K. ``forward`` returns the logits
    [B,1+K,h,w] at the skip's stride (4) with the background logit the constant 1."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        channels: int = 256,
        skip_channels: int = 48,
        psi: float = 0.3,
        norm: str = "bn_relu",
        frozen_bn: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.frozen_bn = frozen_bn
        self.psi = psi
        self.aspp = DeepLabV3Head(backbone.out_channels, channels, output_stride=backbone.output_stride, norm=norm)
        self.skip = nn.Sequential(
            nn.Conv2d(backbone.stage_channels["conv3"], skip_channels, 1, bias=False), norm_act(skip_channels, norm)
        )
        self.merge = nn.Sequential(
            nn.Conv2d(channels + skip_channels, channels, 3, padding=1, bias=False), norm_act(channels, norm)
        )
        self.gci = GlobalCueInjection(channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_act(channels, norm),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_act(channels, norm),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
        for m in [self.skip, self.merge, self.gci, self.decoder]:
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.kaiming_normal_(conv.weight)
        if frozen_bn:
            self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.backbone.forward_features(x)
        skip = self.skip(d["conv3"])
        aspp = F.interpolate(self.aspp(d["out"]), skip.shape[-2:], mode="bilinear", align_corners=False)
        merged = self.merge(torch.cat([aspp, skip], 1))
        # the gate's "deep" input is the merged map, its "shallow" one the GCI output (SS's naming)
        mixed = stochastic_gate(merged, self.gci(merged, aspp), self.psi, self.training)
        fg = self.decoder(mixed)
        return torch.cat([torch.ones_like(fg[:, :1]), fg], 1)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.aspp, self.skip, self.merge, self.gci, self.decoder) for p in m.parameters()]


def background_power(probs: torch.Tensor, power: float) -> torch.Tensor:
    """Scores [1+K,H,W] with the background channel raised to ``power`` (SS's inference sharpening)."""
    return torch.cat([probs[:1].pow(power), probs[1:]])


class SSLearner(WeakLearner):
    name = "ss"
    Params = SSParams

    def __init__(self, params, num_classes: int):
        super().__init__(params, num_classes)
        if params.crf:
            require_crf()  # fail before training, not after it

    def build_net(self, model_cfg) -> nn.Module:
        body = build_backbone(
            model_cfg.backbone,
            output_stride=model_cfg.output_stride,
            norm=model_cfg.norm,
            small_width=model_cfg.small_width,
        )
        load_backbone_weights(body, model_cfg.pretrained)
        frozen = wants_frozen_bn(self.p.frozen_bn, model_cfg.pretrained)
        return SSNet(
            body, self.num_classes, model_cfg.head_channels, self.p.skip_channels, self.p.psi, model_cfg.norm, frozen
        )

    def losses(self, net: nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        p = self.p
        x, y = batch.images, batch.labels.float()
        logits = net(x)
        scores = ngwp_focal_scores(logits, p.ngwp_eps, p.focal_p, p.focal_lambda)[:, 1:]
        terms = {"cls": F.multilabel_soft_margin_loss(scores, y)}
        if epoch >= p.pretrain_epochs:
            terms["mask"] = p.mask_loss_weight * self.mask_loss(x, logits, y)
        return terms

    def mask_loss(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The balanced CE on the pseudo-GT: softmax of the detached logits refined by PAMR on the image at the
        logits' resolution, both upsampled to the image (align_corners=True), foreground × labels, then the
        pseudo-GT with SS's cutoffs (losses.self_supervised_loss)."""
        p = self.p
        size = images.shape[-2:]
        with torch.no_grad():
            probs = torch.softmax(logits.detach().float(), 1)
            rgb = F.interpolate(denormalize(images.float()), logits.shape[-2:], mode="bilinear", align_corners=True)
            refined = pamr(rgb, probs, p.pamr_iterations, p.pamr_dilations)
            refined = F.interpolate(refined, size, mode="bilinear", align_corners=True)
            keep = torch.cat([labels.new_ones(labels.shape[0], 1), labels], 1)
            refined = refined * keep[:, :, None, None]
        up = F.interpolate(logits, size, mode="bilinear", align_corners=True)
        return self_supervised_loss(up, refined, labels, p.cutoff_fg, p.cutoff_bg, p.cutoff_low)

    @torch.no_grad()
    def scores(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mask scores [1+K,H,W] of one image [1,3,H,W]: mean softmax over scales and flips, foreground × labels,
        background to the power ``bg_power``."""
        maps = multiscale_flip(lambda v: torch.softmax(net(v), 1), image, self.p.scales, self.p.flip)
        probs = torch.stack(maps).mean(0)[0]
        probs = torch.cat([probs[:1], probs[1:] * labels.float().view(-1, 1, 1)])
        return background_power(probs, self.p.bg_power)

    @torch.no_grad()
    def infer_mask(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        scores = self.scores(net, image, labels)
        if not self.p.crf:
            return scores.argmax(0).cpu()
        keep = torch.cat(
            [torch.zeros(1, dtype=torch.long, device=scores.device), torch.nonzero(labels > 0.5).flatten() + 1]
        )
        refined = dense_crf(denormalize(image), scores[keep], self.p.crf_iterations)
        return keep.cpu()[torch.from_numpy(refined).argmax(0)]


__all__ = ["GlobalCueInjection", "SSLearner", "SSNet", "SSParams", "background_power", "stochastic_gate"]
