"""Wide-ResNet-38 "A2" (Wu et al.'s ResNet-38 in Mapillary InPlace-ABN form): the encoder of SEAM/SS/EPS/CAM and of
WILSON's COCO-to-VOC runs (method.md §2.1, baselines.md §4-6).

Layout (``mod1`` .. ``mod7``, block counts 3/3/6/3/1/1), every block a pre-activation ("identity mapping") residual
block: ``bn1`` (BN+act of the block input) feeds both the ``convs`` branch and, where shapes change, the 1x1
``proj_conv`` shortcut; otherwise the shortcut is the un-normalised input.

==========  =======================  ====================================================================
module      channels                 stride / dilation at output stride 8 (16)
==========  =======================  ====================================================================
mod1        conv1 3x3, 64            1
mod2        (128, 128) x 3           max-pool /2 before
mod3        (256, 256) x 3           max-pool /2 before                  -> ``conv3``, stride 4
mod4        (512, 512) x 6           first block stride 2                -> ``conv4``, stride 8
mod5        (512, 1024) x 3          dilation 2 (first block stride 2)   -> ``conv5``
mod6        (512, 1024, 2048) x 1    dilation 4 (2), Dropout2d 0.3       -> ``conv6``
mod7        (1024, 2048, 4096) x 1   dilation 4 (2), Dropout2d 0.5
bn_out      BN+act of 4096                                               -> ``out`` (what ``forward`` returns)
==========  =======================  ====================================================================

Parameter names equal those of the authors' ImageNet checkpoint ``wide_resnet38_ipabn_lr_256.pth.tar`` without its
``module.`` prefix (``mod4.block2.convs.bn2.running_var``), so ``weights.convert_iabn_checkpoint`` only strips and
validates. Norms are plain ``nn.BatchNorm2d`` with the activation as a separate module (``norm``: LeakyReLU 0.01 as
InPlace-ABN, or ReLU as SEAM's MXNet port), so ``nn.SyncBatchNorm.convert_sync_batchnorm`` keeps the activations.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from wilson_ray.errors import UserError
from wilson_ray.models.norm import STAGES, activation, check_norm

# (channels of each conv of a block, number of blocks) for mod2..mod7; two channels: two 3x3 convs, three: 1x1-3x3-1x1.
STRUCTURE: tuple[tuple[tuple[int, ...], int], ...] = (
    ((128, 128), 3),
    ((256, 256), 3),
    ((512, 512), 6),
    ((512, 1024), 3),
    ((512, 1024, 2048), 1),
    ((1024, 2048, 4096), 1),
)
STEM_CHANNELS = 64
# Dropout2d of mod6 and mod7 (the A2 net's only dropout).
DROPOUT = {6: 0.3, 7: 0.5}
# forward_features (norm.STAGES): the module whose output each convN is; "out" is bn_out(mod7).
_STAGE_MODULE = {"conv3": 3, "conv4": 4, "conv5": 5, "conv6": 6}


def _layout(output_stride: int) -> dict[int, tuple[int, int]]:
    """(first-block stride, dilation) of mod4..mod7 for the output stride (mod2/mod3 are reached by max-pools)."""
    if output_stride == 8:  # the A2 net with dilation=True: strides 2, 2 (pools), 2 (mod4) -> 8
        return {4: (2, 1), 5: (1, 2), 6: (1, 4), 7: (1, 4)}
    if output_stride == 16:
        return {4: (2, 1), 5: (2, 1), 6: (1, 2), 7: (1, 2)}
    raise UserError(f"model.output_stride: found {output_stride!r}, expected 16 or 8")


class PreActBlock(nn.Module):
    """Pre-activation residual block (InPlace-ABN's ``IdentityResidualBlock``).

    ``bn1`` + ``act1`` normalise the input; ``convs`` is conv1, bn2, act2, [dropout], conv2 (two 3x3 convs, dilated)
    or conv1 (1x1, strided), bn2, act2, conv2 (3x3, dilated), bn3, act3, [dropout], conv3 (1x1); the shortcut is
    ``proj_conv`` of the normalised input when stride or width change, else the raw input.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        norm: str,
        stride: int = 1,
        dilation: int = 1,
        dropout: float | None = None,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = activation(norm)
        d = dilation
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride=stride, padding=d, dilation=d, bias=False)),
                ("bn2", nn.BatchNorm2d(channels[0])),
                ("act2", activation(norm)),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=d, dilation=d, bias=False)),
            ]
        elif len(channels) == 3:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride=stride, bias=False)),
                ("bn2", nn.BatchNorm2d(channels[0])),
                ("act2", activation(norm)),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=d, dilation=d, bias=False)),
                ("bn3", nn.BatchNorm2d(channels[1])),
                ("act3", activation(norm)),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        else:
            raise ValueError(f"a block has 2 or 3 convs, got channels {channels}")
        if dropout is not None:
            # Before the last conv, as the A2 net places it.
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.proj_conv = None
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride=stride, bias=False)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """BN+act of the block input: the normalised view of the previous stage that WSSS nets read."""
        return self.act1(self.bn1(x))

    def forward_preact(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """The block output given its input ``x`` and ``normed = self.preact(x)``."""
        shortcut = x if self.proj_conv is None else self.proj_conv(normed)
        return self.convs(normed) + shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x, self.preact(x))


class WideResNet38(nn.Module):
    """Wide-ResNet-38 A2 body: ``forward(x)`` -> [B, 4096, H/OS, W/OS] (``bn_out`` applied), OS 8 or 16.

    ``forward_features(x)`` returns every stage a WSSS net reads (see :meth:`forward_features`). ``width_divisor``
    divides every width (1 = the real net; tests and CPU demos use 8-64); ``out_channels``, ``arch``,
    ``output_stride`` and ``stage_channels`` describe the built net.
    """

    def __init__(self, output_stride: int = 8, norm: str = "bn_leaky", width_divisor: int = 1):
        super().__init__()
        check_norm(norm)
        if not isinstance(width_divisor, int) or width_divisor < 1 or STEM_CHANNELS % width_divisor:
            raise UserError(
                f"wideresnet38 width_divisor: found {width_divisor!r}, expected a positive divisor of {STEM_CHANNELS}"
            )
        layout = _layout(output_stride)
        w = width_divisor
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, STEM_CHANNELS // w, 3, padding=1, bias=False))]))
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = STEM_CHANNELS // w
        stage_channels = {}
        for mod, (widths, count) in enumerate(STRUCTURE, start=2):
            widths = tuple(c // w for c in widths)
            stride, dilation = layout.get(mod, (1, 1))
            blocks = []
            for b in range(count):
                block = PreActBlock(
                    in_ch, widths, norm, stride=stride if b == 0 else 1, dilation=dilation, dropout=DROPOUT.get(mod)
                )
                blocks.append((f"block{b + 1}", block))
                in_ch = widths[-1]
            self.add_module(f"mod{mod}", nn.Sequential(OrderedDict(blocks)))
            stage_channels[f"conv{mod}"] = in_ch
        self.bn_out = nn.BatchNorm2d(in_ch)
        self.act_out = activation(norm)
        self.out_channels = in_ch
        self.stage_channels = {name: stage_channels[name] for name in STAGES[:-1]} | {"out": in_ch}
        self.arch = "wideresnet38"
        self.output_stride = output_stride
        self.width_divisor = width_divisor
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """mod1..mod3 (stride 4)."""
        return self.mod3(self.pool3(self.mod2(self.pool2(self.mod1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mod7(self.mod6(self.mod5(self.mod4(self._stem(x)))))
        return self.act_out(self.bn_out(x))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All stages in one pass: ``{"conv3", "conv4", "conv5", "conv6", "out"}``.

        ``convN`` is the output of ``modN`` as the next module's first block normalises it (its ``bn1`` + act, the
        "x_bn_relu" that ResNet-38 WSSS code reads): conv3 256 ch at stride 4, conv4 512 at stride 8, conv5 1024 and
        conv6 2048 at the output stride (channels ÷ ``width_divisor``). ``out`` is ``forward(x)`` (4096 ch; what
        SEAM/SS code calls "conv6"). The normalised tensors are the ones the next block consumes, so this costs
        nothing over ``forward``.
        """
        feats: dict[str, torch.Tensor] = {}
        x = self._stem(x)
        for name in STAGES[:-1]:
            stage: nn.Sequential = getattr(self, f"mod{_STAGE_MODULE[name] + 1}")
            first: PreActBlock = stage[0]
            feats[name] = first.preact(x)
            x = first.forward_preact(x, feats[name])
            for block in stage[1:]:
                x = block(x)
        feats["out"] = self.act_out(self.bn_out(x))
        return feats


__all__ = ["STRUCTURE", "PreActBlock", "WideResNet38"]
