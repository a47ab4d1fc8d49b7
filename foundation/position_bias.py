"""Swin-V2 continuous position bias, 16*sigmoid(MLP(relative coordinates)) per token pair, as one autograd Function.

The values are those of `Linear(2, 512) -> ReLU -> Linear(512, h)` on the coordinate table, then a gather to the
window's token pairs. Autograd's generic backward of that tiny-batch MLP is dominated by badly shaped products
(a [512, P] x [P, 2] matmul) and a scattered `index_put` for the gather; here the sigmoid runs on the (2w-1)^2
table before the gather, the gather's backward is one `index_add`, and each product is ordered so it runs
several times faster on CPU. Supports `torch.func` transforms (vmap over per-example gradients in PhysGuard).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ContinuousPositionBias(torch.autograd.Function):
    """(coords [P, 2], index [N*N] into P, w1 [H, 2], b1 [H], w2 [h, H]) -> bias [h, N*N]."""

    generate_vmap_rule = True

    @staticmethod
    def forward(coords, index, w1, b1, w2):
        with torch.autocast(coords.device.type, enabled=False):
            hidden = torch.addmm(b1, coords.to(w1.dtype), w1.t()).relu_()  # [P, H]
            table = torch.sigmoid(hidden @ w2.t()).t().contiguous()  # [h, P]; the products are F.linear's
            return 16.0 * table.index_select(1, index), hidden, table

    @staticmethod
    def setup_context(ctx, inputs, output):
        coords, index, _, _, w2 = inputs
        _, hidden, table = output
        ctx.mark_non_differentiable(hidden, table)
        ctx.save_for_backward(coords, index, w2, hidden, table)

    @staticmethod
    def backward(ctx, grad_bias, _grad_hidden, _grad_table):
        coords, index, w2, hidden, table = ctx.saved_tensors
        grad_bias = grad_bias.to(table.dtype)
        # sum over the token pairs sharing an offset, then back through 16*sigmoid, the MLP and the ReLU
        grad_table = torch.zeros_like(table).index_add(1, index, grad_bias)
        grad_logits = grad_table * (16.0 * table * (1.0 - table))  # [h, P]
        grad_w2 = grad_logits @ hidden  # [h, H]
        grad_hidden = torch.ops.aten.threshold_backward(grad_logits.t() @ w2, hidden, 0.0)  # [P, H]
        inputs = F.pad(coords.to(hidden.dtype), (0, 1), value=1.0)  # [P, 3]: coordinates and a ones column
        grad_w1_b1 = inputs.t() @ grad_hidden  # [3, H]: weight and bias gradients in one read of grad_hidden
        return None, None, grad_w1_b1[:2].t(), grad_w1_b1[2], grad_w2


def continuous_position_bias(
    coords: torch.Tensor, index: torch.Tensor, mlp: torch.nn.Sequential, num_heads: int
) -> torch.Tensor:
    """16*sigmoid(mlp(coords))[index] as [h, N, N], for `mlp` = Sequential(Linear(2, H), ReLU, Linear(H, h, no bias))."""
    first, last = mlp[0], mlp[2]
    bias, _, _ = ContinuousPositionBias.apply(
        coords, index.reshape(-1), first.weight, first.bias, last.weight
    )
    n = index.shape[-1]
    return bias.view(num_heads, n, n)
