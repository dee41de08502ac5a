"""Models of method.md §2: encoder (ResNet, Wide-ResNet-38), DeepLab-V3 head, per-step classifiers, localizer,
weight loading."""

from wilson_ray.models.backbone import ResNetBody, build_backbone
from wilson_ray.models.head import DeepLabV3Head
from wilson_ray.models.localizer import Localizer
from wilson_ray.models.segmenter import ModelOutput, Segmenter, build_segmenter
from wilson_ray.models.weights import convert_iabn_checkpoint, load_backbone_weights
from wilson_ray.models.wideresnet import WideResNet38

__all__ = [
    "DeepLabV3Head",
    "Localizer",
    "ModelOutput",
    "ResNetBody",
    "Segmenter",
    "WideResNet38",
    "build_backbone",
    "build_segmenter",
    "convert_iabn_checkpoint",
    "load_backbone_weights",
]
