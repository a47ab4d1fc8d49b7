"""Gives any image-to-image network ScOT's forward signature and loss, so the few-shot loop trains it.

The lead time enters as one extra constant input channel (the usual way an FNO or U-Net is
time-conditioned); masked channels take the label's value and the loss is Poseidon's relative
group loss, exactly as in `foundation.modeling_scot.ScOT.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from foundation.loss import masked_output_and_loss
from foundation.modeling_scot import ScOTOutput


class TimeConditionedOperator(nn.Module):
    """`forward(pixel_values, time, pixel_mask=None, labels=None) -> ScOTOutput` around `net`.

    `net` maps [B, num_channels + 1, H, W] (the state and the lead time) to [B, num_out_channels, H, W].
    With `full_precision` the net runs in fp32 even under mixed-precision autocast (FFTs: cuFFT has no bf16).
    """

    def __init__(
        self,
        net: nn.Module,
        num_channels: int,
        num_out_channels: int,
        channel_slices: Sequence[int] | None = None,
        p: int = 1,
        full_precision: bool = False,
    ):
        super().__init__()
        self.net, self.full_precision = net, full_precision
        self.num_channels, self.num_out_channels = num_channels, num_out_channels
        self.channel_slices = list(channel_slices) if channel_slices is not None else None
        self.p = p

    def forward(
        self,
        pixel_values: torch.Tensor,
        time: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **conditioning,
    ) -> ScOTOutput:
        """Operator conditioning (`pde_id`, `coefficients`) is accepted and ignored, like ScOT without it."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self.net).__name__}: pixel_values must be [B, {self.num_channels}, H, W], "
                f"got {tuple(pixel_values.shape)}"
            )
        b, _, h, w = pixel_values.shape
        t = time.reshape(b, 1, 1, 1).to(pixel_values.dtype).expand(b, 1, h, w)
        inputs = torch.cat([pixel_values, t], dim=1)
        if self.full_precision:
            with torch.autocast(inputs.device.type, enabled=False):
                output = self.net(inputs.float())
        else:
            output = self.net(inputs)
        if pixel_mask is not None and labels is None:
            raise ValueError("pixel_mask needs labels (masked entries take the label's value)")
        output, loss = masked_output_and_loss(output, labels, pixel_mask, self.channel_slices, self.p)
        return ScOTOutput(loss=loss, output=output)
