"""Models of method.md §2: encoder, DeepLab-V3 head, per-step classifiers, localizer, weight loading."""

from wilson_ray.models.backbone import ResNetBody, build_backbone
from wilson_ray.models.head import DeepLabV3Head
from wilson_ray.models.localizer import Localizer
from wilson_ray.models.segmenter import ModelOutput, Segmenter, build_segmenter
from wilson_ray.models.weights import convert_iabn_checkpoint, load_backbone_weights

__all__ = [
    "DeepLabV3Head",
    "Localizer",
    "ModelOutput",
    "ResNetBody",
    "Segmenter",
    "build_backbone",
    "build_segmenter",
    "convert_iabn_checkpoint",
    "load_backbone_weights",
]
