"""Encoders ("body") for the segmenter: torchvision ResNet-50/101, a tiny CPU ResNet (method.md §2.1) and
Wide-ResNet-38 (``wideresnet.py``).

Every norm is a plain ``nn.BatchNorm2d`` so ``nn.SyncBatchNorm.convert_sync_batchnorm`` works unchanged; the
activation is LeakyReLU(0.01) (``bn_leaky``, the InPlace-ABN equivalent of §2.4) or ReLU (``bn_relu``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, resnet50, resnet101

from wilson_ray.errors import UserError
from wilson_ray.models.norm import STAGES, activation, check_norm
from wilson_ray.models.wideresnet import WideResNet38

BACKBONES = ("resnet50", "resnet101", "small", "wideresnet38")


def _stage_dilations(output_stride: int) -> tuple[int, int, int, int]:
    """Dilation of stages 2..5 (layer1..layer4); strided stages have dilation 1 (§2.1)."""
    if output_stride == 16:
        return (1, 1, 1, 2)
    if output_stride == 8:
        return (1, 1, 2, 4)
    raise UserError(f"model.output_stride: found {output_stride!r}, expected 16 or 8")


def _swap_relu(module: nn.Module, norm: str) -> None:
    """Replace every ReLU submodule by the activation of ``norm``.

    torchvision's Bottleneck/BasicBlock reuse one ``relu`` after each BN and after the residual add, which is
    exactly the InPlace-ABN order "add the residual, then activate" of §2.1.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, activation(norm))
        else:
            _swap_relu(child, norm)


def _dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Give every 3x3 conv of ``stage`` stride 1 and the stage's dilation (padding = dilation).

    torchvision's ``replace_stride_with_dilation`` keeps the first block at the previous stage's dilation;
    method.md §2.1 dilates all blocks of the stage, so this fixes it after construction. The 1x1 projection
    shortcut loses its stride too, keeping the residual shapes consistent.
    """
    for block in stage:
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation, dilation)


class ResNetBody(nn.Module):
    """ResNet without avgpool/fc; ``forward`` returns the body features [B, out_channels, H/OS, W/OS].

    Submodule names follow torchvision (conv1, bn1, relu, maxpool, layer1..layer4) so torchvision state dicts
    load into it after dropping ``fc.*``.
    """

    def __init__(
        self,
        stem: dict[str, nn.Module],
        layers: list[nn.Sequential],
        out_channels: int,
        arch: str,
        output_stride: int,
    ):
        super().__init__()
        self.conv1 = stem["conv1"]
        self.bn1 = stem["bn1"]
        self.relu = stem["relu"]
        self.maxpool = stem["maxpool"]
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels
        self.arch = arch
        self.output_stride = output_stride
        self.stage_channels = dict(zip(STAGES, [_out_width(s) for s in layers] + [out_channels]))

    def forward(self, x: torch.Tensor, stages: bool = False):
        """Body features; with ``stages`` also the pre-activation residual sum of each stage's last block
        (stride 4/8/16/16 at OS 16), the maps PLOP distils (baselines.md §1): ``(features, (s1, s2, s3, s4))``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if not stages:
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        sums = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer[:-1]:
                x = block(x)
            pre = residual_sum(layer[-1], x)
            sums.append(pre)
            x = layer[-1].relu(pre.clone())  # the block's own (in-place) activation must not overwrite the sum
        return x, tuple(sums)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs under the names of :class:`~wilson_ray.models.wideresnet.WideResNet38.forward_features`:
        conv3..conv6 = layer1..layer4 (strides 4, 8, then the output stride; ResNet-50/101 widths 256/512/1024/2048,
        as WRN-38's conv3..conv6), ``out`` = layer4 (what ``forward`` returns)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = {}
        for name, layer in zip(STAGES, (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = feats[name] = layer(x)
        feats["out"] = x
        return feats


def residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The torchvision BasicBlock / Bottleneck forward up to the residual addition, before the last activation."""
    identity = block.downsample(x) if block.downsample is not None else x
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):  # Bottleneck
        out = block.bn3(block.conv3(block.relu(out)))
    return out + identity


def _out_width(stage: nn.Sequential) -> int:
    """Output channels of a torchvision ResNet stage (its last block's last BN)."""
    return [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def _torchvision_resnet(name: str, output_stride: int, norm: str) -> ResNetBody:
    dilations = _stage_dilations(output_stride)
    builder = {"resnet50": resnet50, "resnet101": resnet101}[name]
    net = builder(weights=None)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    for stage, dilation in zip(layers, dilations):
        if dilation > 1:
            _dilate_stage(stage, dilation)
    stem = {"conv1": net.conv1, "bn1": net.bn1, "relu": net.relu, "maxpool": net.maxpool}
    body = ResNetBody(stem, layers, out_channels=2048, arch=name, output_stride=output_stride)
    _swap_relu(body, norm)
    return body


def _small_resnet(output_stride: int, norm: str, width: int) -> ResNetBody:
    """Tiny ResNet-18-like body (one BasicBlock per stage, widths width×(1,2,4,8)) for CPU demos."""
    if width < 1:
        raise UserError(f"model.small_width: found {width!r}, expected a positive integer")
    dilations = _stage_dilations(output_stride)
    widths = [width, 2 * width, 4 * width, 8 * width]
    strides = [1, 2, 2, 2]
    # A 3x3 stride-2 stem (not 7x7) keeps the demo model cheap; stem + max-pool still give stride 4.
    stem = {
        "conv1": nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
        "bn1": nn.BatchNorm2d(width),
        "relu": nn.ReLU(inplace=True),
        "maxpool": nn.MaxPool2d(3, stride=2, padding=1),
    }
    layers = []
    in_ch = width
    for out_ch, stride, dilation in zip(widths, strides, dilations):
        # Dilated stages are built strided and then converted, because BasicBlock refuses dilation > 1.
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        stage = nn.Sequential(BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample))
        if dilation > 1:
            _dilate_stage(stage, dilation)
        layers.append(stage)
        in_ch = out_ch
    body = ResNetBody(stem, layers, out_channels=widths[-1], arch="small", output_stride=output_stride)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    _swap_relu(body, norm)
    return body


def build_backbone(name: str, output_stride: int = 16, norm: str = "bn_leaky", small_width: int = 16) -> nn.Module:
    """Build the encoder of method.md §2.1: ``resnet50``/``resnet101`` (torchvision, random init), ``small``, or
    ``wideresnet38`` (:class:`~wilson_ray.models.wideresnet.WideResNet38`, 4096 channels; OS 8 as the paper ran it).

    ResNets: output stride 16 dilates all of stage 5 by 2; output stride 8 dilates stage 4 by 2 and stage 5 by 4.
    The returned module has ``out_channels``, ``arch``, ``output_stride`` and ``stage_channels`` attributes and a
    ``forward_features(x) -> dict`` over :data:`STAGES` (shallow stage features for WSSS nets).
    """
    check_norm(norm)
    if name in ("resnet50", "resnet101"):
        return _torchvision_resnet(name, output_stride, norm)
    if name == "small":
        return _small_resnet(output_stride, norm, small_width)
    if name == "wideresnet38":
        return WideResNet38(output_stride=output_stride, norm=norm)
    raise UserError(f"model.backbone: found {name!r}, expected one of {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "ResNetBody", "build_backbone"]
