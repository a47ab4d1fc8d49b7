"""Swin-V2 shifted-window attention (scaled cosine attention with a continuous position bias).

Semantics are HF `Swinv2SelfAttention`'s, as Poseidon uses it: q, k L2-normalised, logits scaled by
exp(min(logit_scale, ln 100)), plus 16*sigmoid(CPB) and the shifted-window mask. Blocks that share a window
geometry (one level of the encoder and its decoder mirror) get their additive masks and logit scales from one
batched computation per forward (`level_attention_inputs`), so a step runs the position-bias MLP once per
level rather than once per block. The geometric constants live in `WindowTables` (non-persistent buffers).

Three interchangeable implementations of softmax(q k^T + mask) v (`ScOTConfig.attn_implementation`):
"eager" (explicit matmuls), "sdpa" (`F.scaled_dot_product_attention`, fused kernels on GPUs) and "chunked"
(`foundation.chunked_attention`, the fastest CPU training path); "auto" picks per call (`resolve_implementation`).
Under autocast, q, k and the mask stay in the autocast dtype: only the per-row norms are reduced in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from foundation.chunked_attention import chunked_window_attention
from foundation.position_bias import autocast_off, level_position_bias

SHIFT_MASK_VALUE = -200.0
"""HF Swinv2 adds its -100 shift mask twice; the same value keeps outputs identical."""
_MAX_LOGIT_SCALE = math.log(100.0)


def window_and_shift(grid: int, window_size: int, shifted: bool) -> tuple[int, int]:
    """Effective window and shift on a grid: the window shrinks to the grid, and a single window is never shifted."""
    window = min(window_size, grid)
    shift = window_size // 2 if shifted and grid > window else 0
    return window, shift


def coords_table(window: int, device) -> torch.Tensor:
    """CPB inputs: relative offsets in [-(w-1), w-1]^2, normalised to [-8, 8] and log-spaced (Swin-V2)."""
    r = torch.arange(-(window - 1), window, dtype=torch.float32, device=device)
    table = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
    table = table / max(window - 1, 1) * 8.0
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8.0)


def relative_index(window: int, device) -> torch.Tensor:
    """[w^2, w^2] index of each (query, key) token pair's relative offset into `coords_table`."""
    a = torch.arange(window, device=device)
    coords = torch.stack(torch.meshgrid(a, a, indexing="ij")).flatten(1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N]
    return rel[0] * (2 * window - 1) + rel[1]


def shift_mask_table(padded: int, window: int, shift: int, device) -> torch.Tensor:
    """[nW, 1, w^2, w^2] mask separating tokens that the cyclic shift brought from different image regions."""
    labels = torch.zeros(padded, padded, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            labels[rows, cols] = 3 * i + j
    n = padded // window
    windows = labels.view(n, window, n, window).permute(0, 2, 1, 3).reshape(n * n, window * window)
    differs = windows[:, None, :] != windows[:, :, None]
    mask = torch.zeros(differs.shape, device=device).masked_fill(differs, SHIFT_MASK_VALUE)
    return mask.unsqueeze(1)


def level_tables(grid: int, window_size: int, device=None) -> dict[str, torch.Tensor]:
    """The constants of window attention on one token grid: coordinate table, index, shift mask (if shifted)."""
    window, shift = window_and_shift(grid, window_size, shifted=True)
    tables = {"coords": coords_table(window, device), "index": relative_index(window, device).flatten()}
    if shift:
        padded = math.ceil(grid / window) * window
        tables["shift_mask"] = shift_mask_table(padded, window, shift, device)
    return tables


class WindowTables(nn.Module):
    """Per-level attention constants for the configured input size, as non-persistent buffers (never saved, moved
    with the model, graph inputs under torch.compile); other input sizes build theirs on each call."""

    def __init__(self, config):
        super().__init__()
        self.window_size = config.window_size
        self.grids = [(config.image_size // config.patch_size) >> level for level in range(config.num_layers)]
        self.reset_tables()

    def reset_tables(self) -> None:
        """(Re)compute every buffer, e.g. after a model was materialised from the meta device."""
        for level, grid in enumerate(self.grids):
            for name, value in level_tables(grid, self.window_size).items():
                key = f"{name}_{level}"
                current = getattr(self, key, None)
                device = current.device if current is not None else None
                self.register_buffer(key, value.to(device), persistent=False)

    def get(self, level: int, grid: int, device) -> dict[str, torch.Tensor]:
        if grid != self.grids[level]:
            return level_tables(grid, self.window_size, device)
        names = ("coords", "index", "shift_mask")
        return {n: getattr(self, f"{n}_{level}") for n in names if hasattr(self, f"{n}_{level}")}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on `x` produce: the autocast dtype when autocast is on for its device, else its own."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def level_attention_inputs(
    attentions: Sequence[ScaledCosineSelfAttention],
    shifted: Sequence[bool],
    tables: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> list[tuple]:
    """The per-step inputs of each of several blocks' attentions that share one window geometry, computed for all
    of them at once: (additive mask [1 or nW, h, N, N] in `dtype`, q/k/v row scale [3, h, 1, 1] and offset (see
    `NormalizeQK`), concatenated q/k/v weight [3C, C] and bias [3C] (None when a layer is wrapped, e.g. by LoRA)).

    One batched position-bias MLP, one clamp+exp of the logit scales, one shift-mask addition and one q/k/v
    weight concatenation serve every block; each block gets views with the same strides (compiled blocks share
    code)."""
    order = [i for i, s in enumerate(shifted) if not s] + [i for i, s in enumerate(shifted) if s]
    unshifted = len(order) - sum(shifted)
    ordered = [attentions[i] for i in order]
    mlps = [a.continuous_position_bias_mlp for a in ordered]
    bias = level_position_bias(tables["coords"], tables["index"], mlps).to(dtype)  # [n, h, N, N]
    masks = list(bias[:unshifted].unsqueeze(1).unbind(0))
    if unshifted < len(order):
        shift_mask = tables["shift_mask"].to(dtype)  # [nW, 1, N, N]
        masks += list((bias[unshifted:].unsqueeze(1) + shift_mask).unbind(0))
    logit = torch.stack([a.logit_scale for a in ordered]).clamp(max=_MAX_LOGIT_SCALE).exp()  # [n, h, 1, 1]
    one, zero = torch.ones_like(logit), torch.zeros_like(logit)
    scales = torch.stack([logit, one, zero], 1).unbind(0)  # q: logit scale, k: 1, v: 0
    offset = torch.stack([zero[0], zero[0], one[0]])  # v: 1
    layers = [(a.query, a.key, a.value) for a in ordered]
    weights = biases = [None] * len(order)
    if all(type(layer) is nn.Linear for group in layers for layer in group):
        width = ordered[0].query.weight.shape[1]
        weights = torch.cat([layer.weight for group in layers for layer in group]).to(
            dtype
        )  # one autocast cast
        weights = weights.view(len(order), -1, width).unbind(0)
        if ordered[0].query.bias is not None:
            no_bias = torch.zeros_like(ordered[0].query.bias)  # key has none
            biases = torch.cat([b for q, _, v in layers for b in (q.bias, no_bias, v.bias)]).to(dtype)
            biases = biases.view(len(order), -1).unbind(0)
    out: list = [None] * len(order)
    for slot, i in enumerate(order):
        out[i] = (masks[slot], scales[slot], offset, weights[slot], biases[slot])
    return out


def resolve_implementation(requested: str, q: torch.Tensor, mask: torch.Tensor, dropout: float) -> str:
    """The implementation a call runs. "auto": the chunked Function for CPU training of a trainable mask in plain
    eager mode (where SDPA's differentiation of an additive mask is several times slower), SDPA otherwise.
    "chunked" falls back to "eager" where its hand-written Function cannot run (torch.compile, torch.func
    transforms, attention dropout)."""
    chunkable = not _traced() and dropout == 0.0
    if requested == "auto":
        trains = mask.requires_grad and torch.is_grad_enabled()
        return "chunked" if chunkable and trains and q.device.type == "cpu" else "sdpa"
    if requested == "chunked" and not chunkable:
        return "eager"
    return requested


def _traced() -> bool:
    """Under torch.compile or a torch.func transform, where `out=` into a chosen layout is not supported."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


class NormalizeQK(torch.autograd.Function):
    """qkv [3, B*nW, h, N, d] (any strides) -> contiguous qkv with q and k L2-normalised along d, q times the logit
    scale and v unchanged, from one per-row factor scale / max(|x|, 1e-12) + offset (scale [3, h, 1, 1] is
    (logit scale, 1, 0), offset (0, 0, 1)) as F.normalize computes it.

    Stays in qkv's dtype (only the per-row norms are float32, so CUDA autocast upcasts nothing). The output is
    contiguous, so the attention kernels need no copies of q, k, v, and the gradient comes back in qkv's own
    layout: a few ops instead of autograd's dozen, and no zero-filled or concatenated gradients.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv, scale, offset):
        with autocast_off(qkv.device.type):
            # float32 norms for half/bfloat16 (and float32) inputs; float64 inputs keep float64
            norm_dtype = torch.promote_types(qkv.dtype, torch.float32)
            norm = torch.linalg.vector_norm(qkv, dim=-1, keepdim=True, dtype=norm_dtype)
            inv = torch.reciprocal(norm.clamp_min_(1e-12))  # [3, B*nW, h, N, 1]
            factor = torch.addcmul(offset.unsqueeze(1), inv, scale.unsqueeze(1))
            if _traced():
                return (qkv * factor.to(qkv.dtype)).contiguous(), inv, factor
            out = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
            return torch.mul(qkv, factor.to(qkv.dtype), out=out), inv, factor

    @staticmethod
    def setup_context(ctx, inputs, output):
        qkv, scale, _ = inputs
        _, inv, factor = output
        ctx.mark_non_differentiable(inv, factor)
        ctx.set_materialize_grads(False)  # no zero gradients made for inv and factor
        ctx.save_for_backward(qkv, scale, inv, factor)

    @staticmethod
    def backward(ctx, grad, _grad_inv, _grad_factor):
        if grad is None:
            return None, None, None
        qkv, scale, inv, factor = ctx.saved_tensors
        # y = x * (s / |x| + o): dy/dx . g = g * factor - x * (g . x) * s / |x|^3 (rows with |x| > 1e-12)
        gx = torch.linalg.vecdot(grad.to(qkv.dtype), qkv).unsqueeze(-1).to(inv.dtype)  # [3, B*nW, h, N, 1]
        scaled = gx * inv
        grad_scale = scaled.sum(dim=(1, 3))  # [3, h, 1]
        correction = (scaled * (inv * inv) * scale.unsqueeze(1)).to(qkv.dtype)
        if _traced():
            grad_qkv = torch.addcmul(grad * factor.to(qkv.dtype), qkv, correction, value=-1.0)
        else:  # in qkv's layout: the gradient flows on to the projection without a copy
            grad_qkv = torch.empty_like(qkv)
            torch.addcmul(grad * factor.to(qkv.dtype), qkv, correction, value=-1.0, out=grad_qkv)
        return grad_qkv, grad_scale.unsqueeze(-1), None


class ScaledCosineSelfAttention(nn.Module):
    """Parameters and score computation of one Swin-V2 attention (keys as HF `Swinv2SelfAttention`)."""

    def __init__(self, dim: int, num_heads: int, config):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.config = config
        self.num_heads = num_heads
        self.dropout = config.attention_probs_dropout_prob
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.continuous_position_bias_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)

    def _project(self, windows: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., 3C] of q, k, v: one matmul for plain linears; module by module once wrapped
        (a peft LoRA layer on query/key/value must run its own forward)."""
        layers = (self.query, self.key, self.value)
        if any(type(layer) is not nn.Linear for layer in layers):
            return torch.cat([layer(windows) for layer in layers], dim=-1)
        weight = torch.cat([layer.weight for layer in layers])
        bias = None
        if self.query.bias is not None:
            bias = torch.cat([self.query.bias, torch.zeros_like(self.query.bias), self.value.bias])
        return F.linear(windows, weight, bias)

    def forward(self, windows, mask, scale, offset, weight=None, bias=None) -> torch.Tensor:
        """windows [B, nW, N, C] and this block's share of `level_attention_inputs` (mask [1 or nW, h, N, N],
        scale and offset of `NormalizeQK`, q/k/v weight and bias or None) -> attended values [B, nW, N, C]."""
        b, nw, n, c = windows.shape
        h = self.num_heads
        qkv = F.linear(windows, weight, bias) if weight is not None else self._project(windows)
        qkv = qkv.view(b * nw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # [3, B*nW, h, N, d]
        q, k, v = NormalizeQK.apply(qkv, scale, offset)[0].unbind(0)
        dropout = self.dropout if self.training else 0.0
        mask = mask.to(q.dtype)
        implementation = resolve_implementation(self.config.attn_implementation, q, mask, dropout)
        if implementation == "chunked":
            out = chunked_window_attention(q, k, v, mask, nw)
        elif implementation == "eager":
            scores = (q @ k.transpose(-2, -1)).view(b, nw, h, n, n) + mask
            probs = F.dropout(torch.softmax(scores, dim=-1), dropout, self.training)
            out = probs.view(b * nw, h, n, n).to(v.dtype) @ v
        elif mask.shape[0] > 1:
            # One mask per window: fold the windows into the heads, so the mask broadcasts over the batch as a view.
            q, k, v = (t.reshape(b, nw * h, n, c // h) for t in (q, k, v))
            mask = mask.reshape(1, nw * h, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
            out = out.unflatten(
                1, (nw, h)
            )  # a view whatever layout the kernel wrote (CUDA's is [B, N, H, d])
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        if out.dim() == 4:
            out = out.unflatten(0, (b, nw))
        return out.transpose(2, 3).reshape(b, nw, n, c)


class AttentionOutput(nn.Module):
    """Output projection of the attention (key `attention.output.dense`)."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class WindowAttention(nn.Module):
    """Shifted-window attention on a square token grid: pad, roll, partition, attend, merge, roll back, crop."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool, config):
        super().__init__()
        self.window_size = window_size
        self.shifted = shifted
        self.self = ScaledCosineSelfAttention(dim, num_heads, config)
        self.output = AttentionOutput(dim, config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, grid: int, *inputs) -> torch.Tensor:
        """x [B, grid*grid, C] -> [B, grid*grid, C]; `inputs`: this block's share of `level_attention_inputs`."""
        b, _, c = x.shape
        w, s = window_and_shift(grid, self.window_size, self.shifted)
        p = math.ceil(grid / w) * w
        x = x.view(b, grid, grid, c)
        if p != grid:
            x = F.pad(x, (0, 0, 0, p - grid, 0, p - grid))
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        n = p // w
        windows = x.view(b, n, w, n, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, w * w, c)
        windows = self.output(self.self(windows, *inputs))
        x = windows.view(b, n, n, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, p, p, c)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if p != grid:
            x = x[:, :grid, :grid, :]
        return x.reshape(b, grid * grid, c)
