"""The paper's CAM row (baselines.md §6 "CAM row"): a GAP classifier (dropout -> global average pooling -> fc),
trained with the plain multi-label soft margin; CAM = ReLU(fc weights as a 1×1 conv); masks by EPS's inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.weights import load_backbone_weights
from wilson_ray.weak.base import LearnerSchedule, WeakLearner, multiscale_flip


@dataclass
class CamParams(LearnerSchedule):
    epochs: int = 15  # EPS's 20k iterations of batch 8 over VOC's 10,582 training images
    dropout: float = 0.5  # dropout on the features before the fc (resnet38_cls)
    bg_threshold: float = 0.2  # the constant background score of EPS's inference
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    flip: bool = True


class ClassifierNet(nn.Module):
    """Backbone -> dropout -> bias-free 1×1 conv: the class activation logits [B, out, h, w]. Pooling the map
    equals pooling the features first (the conv is linear), so ``forward(x).mean((2, 3))`` is the GAP classifier."""

    def __init__(self, backbone: nn.Module, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, out_channels, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(x)))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())


def build_classifier_net(model_cfg, out_channels: int, dropout: float = 0.0) -> ClassifierNet:
    """``ClassifierNet`` on the backbone of ``model_cfg`` with its ImageNet weights (``model.pretrained``)."""
    body = build_backbone(
        model_cfg.backbone,
        output_stride=model_cfg.output_stride,
        norm=model_cfg.norm,
        small_width=model_cfg.small_width,
    )
    load_backbone_weights(body, model_cfg.pretrained)
    return ClassifierNet(body, out_channels, dropout)


def soft_margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin: mean over batch and classes of −[y log σ(x) + (1−y) log σ(−x)]."""
    return F.multilabel_soft_margin_loss(logits.float(), labels.float())


def maps_to_mask(score: torch.Tensor, labels: torch.Tensor, bg_threshold: float) -> torch.Tensor:
    """EPS's mask rule: per-class maps [K, H, W] summed over views, × image labels, ÷ each class's max; a constant
    background score ``bg_threshold``; argmax -> [H, W] with 0 = background, 1..K = classes."""
    score = score.float().clamp_min(0) * labels.float().view(-1, 1, 1)
    score = score / (score.flatten(1).amax(1).view(-1, 1, 1) + 1e-5)
    bg = torch.full_like(score[:1], bg_threshold)
    return torch.cat([bg, score]).argmax(0)


class CamLearner(WeakLearner):
    name = "cam"
    Params = CamParams

    def build_net(self, model_cfg) -> nn.Module:
        return build_classifier_net(model_cfg, self.num_classes, self.p.dropout)

    def losses(self, net: nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        logits = net(batch.images).mean(dim=(2, 3))
        return {"cls": soft_margin_loss(logits, batch.labels)}

    @torch.no_grad()
    def infer_mask(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        maps = multiscale_flip(lambda x: F.relu(net(x)), image, self.p.scales, self.p.flip)
        return maps_to_mask(torch.stack(maps).sum(0)[0], labels, self.p.bg_threshold)
