"""Swin-V2 continuous position bias, 16*sigmoid(MLP(relative coordinates)) per token pair, for all blocks of a level.

The values are those of each block's `Linear(2, 512) -> ReLU -> Linear(512, h)` on the coordinate table, then a
gather to the window's token pairs. Blocks that share a window (one level of the U-Net) run as one batched product
(`level_position_bias`), so a forward computes the bias once per level instead of once per block. The hand-written
backward gathers with one `index_add`, skips autograd's badly shaped tiny-batch products and returns gradients in
the parameters' own layout. Supports `torch.func` transforms (vmap over per-example gradients in PhysGuard).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn


def autocast_off(device_type: str):
    """A context without autocast on `device_type` (a no-op where autocast is unavailable, e.g. meta tensors)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class ContinuousPositionBias(torch.autograd.Function):
    """(coords [P, 2], index [N*N] into P, w1 [n, H, 2], b1 [n, H], w2 [n, h, H]) -> bias [n, h, N*N]."""

    generate_vmap_rule = True

    @staticmethod
    def forward(coords, index, w1, b1, w2):
        with autocast_off(coords.device.type):
            n = w1.shape[0]
            hidden = torch.baddbmm(b1.unsqueeze(1), coords.to(w1.dtype).expand(n, -1, -1), w1.transpose(1, 2))
            hidden = hidden.relu_()  # [n, P, H]
            table = torch.bmm(w2, hidden.transpose(1, 2)).sigmoid_().mul_(16.0)  # [n, h, P]
            return table.index_select(2, index), hidden, table

    @staticmethod
    def setup_context(ctx, inputs, output):
        coords, index, _, _, w2 = inputs
        _, hidden, table = output
        ctx.mark_non_differentiable(hidden, table)
        ctx.set_materialize_grads(False)  # no zero gradients made for hidden and table
        ctx.save_for_backward(coords, index, w2, hidden, table)

    @staticmethod
    def backward(ctx, grad_bias, _grad_hidden, _grad_table):
        if grad_bias is None:
            return None, None, None, None, None
        coords, index, w2, hidden, table = ctx.saved_tensors
        n = hidden.shape[0]
        # sum over the token pairs sharing an offset, then back through 16*sigmoid (derivative table - table^2/16)
        grad_table = torch.zeros_like(table).index_add(2, index, grad_bias.to(table.dtype))
        grad_logits = grad_table * torch.addcmul(table, table, table, value=-1.0 / 16.0)  # [n, h, P]
        grad_w2 = torch.bmm(grad_logits, hidden)  # [n, h, H]
        grad_hidden = torch.ops.aten.threshold_backward(
            torch.bmm(grad_logits.transpose(1, 2), w2), hidden, 0.0
        )
        coords_t = coords.to(hidden.dtype).t().expand(n, -1, -1)  # [n, 2, P]
        grad_w1 = torch.bmm(coords_t, grad_hidden).transpose(1, 2).contiguous()  # [n, H, 2] as the weights
        return None, None, grad_w1, grad_hidden.sum(1), grad_w2


def level_position_bias(
    coords: torch.Tensor, index: torch.Tensor, mlps: Sequence[nn.Sequential]
) -> torch.Tensor:
    """16*sigmoid(mlp(coords))[index] as [n, h, N, N] for n MLPs `Sequential(Linear(2, H), ReLU, Linear(H, h))`
    (no last bias) of equal shapes, in float32 (or the MLPs' dtype); `index` is [N*N] or [N, N]."""
    index = index.reshape(-1)
    w1 = torch.stack([mlp[0].weight for mlp in mlps])
    b1 = torch.stack([mlp[0].bias for mlp in mlps])
    w2 = torch.stack([mlp[2].weight for mlp in mlps])
    bias, _, _ = ContinuousPositionBias.apply(coords, index, w1, b1, w2)
    side = math.isqrt(index.numel())
    return bias.view(len(mlps), w2.shape[1], side, side)
