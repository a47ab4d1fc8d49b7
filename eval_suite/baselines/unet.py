"""A compact U-Net baseline: conv blocks with periodic padding, GroupNorm and GELU, 2x down/up per level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eval_suite.baselines.time_conditioned import TimeConditionedOperator


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with circular padding (the built-in families are periodic)."""
    layers = []
    for c in (c_in, c_out):
        layers += [
            nn.Conv2d(c, c_out, 3, padding=1, padding_mode="circular"),
            nn.GroupNorm(min(8, c_out), c_out),
            nn.GELU(),
        ]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """[B, C_in, H, W] -> [B, C_out, H, W] with `levels` 2x downsamplings; H and W divisible by 2^levels."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, levels: int = 3):
        super().__init__()
        self.levels = levels
        widths = [width * 2**k for k in range(levels + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])])
        self.down.extend(_block(widths[k], widths[k + 1]) for k in range(levels))
        self.pool = nn.AvgPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(levels)
        )
        self.up = nn.ModuleList(_block(2 * widths[k], widths[k]) for k in range(levels))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.levels
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"UNet with {self.levels} levels needs H and W divisible by {factor}, got {tuple(x.shape)}"
            )
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(self.levels)):
            x = self.up[k](torch.cat([self.upsample[k](x), skips.pop()], dim=1))
        return self.head(x)


def build_unet(
    num_channels: int,
    num_out_channels: int,
    *,
    width: int = 32,
    levels: int = 3,
    channel_slices: Sequence[int] | None = None,
) -> TimeConditionedOperator:
    """The U-Net with ScOT's forward signature and loss (lead time as an extra input channel)."""
    net = UNet(num_channels + 1, num_out_channels, width, levels)
    return TimeConditionedOperator(net, num_channels, num_out_channels, channel_slices)
