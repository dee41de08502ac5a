"""DeepLab-V3 segmentation head, the variant of method.md §2.2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray.errors import UserError
from wilson_ray.models.norm import check_norm, norm_act

_ASPP_DILATIONS = {16: (6, 12, 18), 8: (12, 24, 32)}  # 32, not 36, at OS 8 (§2.2)


class DeepLabV3Head(nn.Module):
    """ASPP head (method.md §2.2): body features [B, in, h, w] -> pre-logits [B, out_channels, h, w].

    Four parallel bias-free convs (1x1 and three dilated 3x3), concat -> BN+act -> 1x1 reduction; plus an
    image-pooling branch (1x1 conv, BN+act, 1x1 conv) broadcast-added; then a final BN+act.
    ``pooling_size`` is the training crop in pixels: at eval the pooling becomes a local average with kernel
    ``pooling_size // output_stride`` (clipped to the map); ``None`` always pools globally.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        output_stride: int = 16,
        norm: str = "bn_leaky",
        pooling_size: int | None = None,
    ):
        super().__init__()
        check_norm(norm)
        if output_stride not in _ASPP_DILATIONS:
            raise UserError(f"model.output_stride: found {output_stride!r}, expected 16 or 8")
        if pooling_size is not None and pooling_size < output_stride:
            raise UserError(
                f"model.pooling_size: found {pooling_size!r}, expected None or a crop size >= the output stride"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_stride = output_stride
        self.pooling_size = pooling_size
        hidden = out_channels
        self.map_convs = nn.ModuleList(
            [nn.Conv2d(in_channels, hidden, 1, bias=False)]
            + [
                nn.Conv2d(in_channels, hidden, 3, padding=d, dilation=d, bias=False)
                for d in _ASPP_DILATIONS[output_stride]
            ]
        )
        self.map_bn = norm_act(4 * hidden, norm)
        self.red_conv = nn.Conv2d(4 * hidden, out_channels, 1, bias=False)
        self.pool_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.pool_bn = norm_act(hidden, norm)
        self.pool_red_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.red_bn = norm_act(out_channels, norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal with the leaky_relu(0.01) gain on every conv, zero biases, BN at identity (§2.5)."""
        gain = nn.init.calculate_gain("leaky_relu", 0.01)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _image_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean at train time; at eval a stride-1 local average, replicate-padded back to h×w."""
        if self.training or self.pooling_size is None:
            return x.mean(dim=(2, 3), keepdim=True)
        k = self.pooling_size // self.output_stride
        kh, kw = min(k, x.shape[2]), min(k, x.shape[3])
        pooled = F.avg_pool2d(x, (kh, kw), stride=1)
        if pooled.shape[2] == 1 and pooled.shape[3] == 1:
            return pooled  # kernel covers the whole map: plain global pooling, broadcast later
        # The pooled map shrinks by k-1; replicate-pad the pooled values (extra pixel on the right/bottom for
        # even kernels) so every output position gets the average of the nearest full window.
        pad = ((kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2)
        return F.pad(pooled, pad, mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.map_bn(out))
        pool = self.pool_red_conv(self.pool_bn(self.pool_conv(self._image_pool(x))))
        return self.red_bn(out + pool)
