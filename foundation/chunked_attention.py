"""softmax(q k^T + mask) v over a batch of windows, chunk by chunk, with a hand-written backward.

For CPU training, where SDPA differentiates a trainable additive mask several times slower than explicit
matmuls. Autograd's explicit version streams the whole [B*nW, h, N, N] score tensor through memory once per op;
here each chunk of samples (a few MB of scores) goes through its matmuls, mask add, softmax and their gradients
while it is still in cache, in place where the kernels allow. Values and gradients equal the explicit form's.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 4 << 20
"""Scores per chunk: a few MB, so a chunk's scores stay in the last-level cache through its ops."""


def _mats(x: torch.Tensor) -> torch.Tensor:
    """[w, h, rows, cols] -> [w*h, rows, cols] (a view: bmm then runs on strided operands without copying)."""
    return x.flatten(0, 1)


class ChunkedWindowAttention(torch.autograd.Function):
    """(q, k, v [B*nW, h, N, d], mask [M, h, N, N] with M = 1 or nW, windows nW) -> [B*nW, h, N, d]."""

    @staticmethod
    def forward(ctx, q, k, v, mask, windows):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        total, heads, n, _ = q.shape
        step = windows * max(1, CHUNK_BYTES // (windows * heads * n * n * q.element_size()))
        probs = q.new_empty(total, heads, n, n)
        out = torch.empty_like(v)
        for s in range(0, total, step):
            p, chunk = probs[s : s + step], slice(s, s + step)
            torch.bmm(_mats(q[chunk]), _mats(k[chunk]).transpose(1, 2), out=_mats(p))
            p.view(-1, *mask.shape).add_(mask)
            torch.ops.aten._softmax.out(p, -1, False, out=p)  # row by row: in place is safe
            torch.bmm(_mats(p), _mats(v[chunk]), out=_mats(out[chunk]))
        ctx.save_for_backward(q, k, v, probs)
        ctx.step, ctx.mask_shape = step, mask.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_mask = q.new_zeros(ctx.mask_shape, dtype=torch.float32)  # a sum over all windows: float32
        step = ctx.step
        for s in range(0, q.shape[0], step):
            chunk = slice(s, s + step)
            p, g = _mats(probs[chunk]), _mats(grad_out[chunk])
            grad_scores = torch.bmm(g, _mats(v[chunk]).transpose(1, 2))  # d probs, then d scores in place
            torch.bmm(p.transpose(1, 2), g, out=_mats(grad_v[chunk]))
            torch.ops.aten._softmax_backward_data.out(grad_scores, p, -1, p.dtype, grad_input=grad_scores)
            grad_mask += grad_scores.view(-1, *ctx.mask_shape).sum(0, dtype=torch.float32)
            torch.bmm(grad_scores, _mats(k[chunk]), out=_mats(grad_q[chunk]))
            torch.bmm(grad_scores.transpose(1, 2), _mats(q[chunk]), out=_mats(grad_k[chunk]))
        return grad_q, grad_k, grad_v, grad_mask.to(q.dtype), None


def chunked_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, windows: int
) -> torch.Tensor:
    """q, k, v [B*nW, h, N, d] (the windows of one sample adjacent); mask [M, h, N, N] with M = 1 or nW."""
    return ChunkedWindowAttention.apply(q, k, v, mask, windows)
