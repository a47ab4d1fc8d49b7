"""Swin-V2 shifted-window attention (scaled cosine attention with a continuous position bias) through SDPA.

Semantics are HF `Swinv2SelfAttention`'s, as Poseidon uses it: q, k L2-normalised, logits scaled by
exp(min(logit_scale, ln 100)), plus 16*sigmoid(CPB) and the shifted-window mask. Here the logit scale is folded
into q, the bias and the shift mask form one additive mask for `scaled_dot_product_attention`, the q/k/v
projections run as one matmul, and the geometric constants (coordinate table, index, shift mask) are built once per
(grid, window, shift, device). While the CPB is not being trained the whole additive mask is cached until its
weights change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foundation.chunked_attention import chunked_window_attention
from foundation.position_bias import continuous_position_bias

SHIFT_MASK_VALUE = -200.0
"""HF Swinv2 adds its -100 shift mask twice; the same value keeps outputs identical."""
_MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class WindowGeometry:
    """Constants of window attention on one token grid: coordinate table, gather index, shift mask."""

    window: int
    shift: int
    padded: int
    coords_table: torch.Tensor  # [(2w-1)^2, 2], log-spaced normalised relative coordinates
    index: torch.Tensor  # [w^2, w^2] long, into coords_table
    shift_mask: torch.Tensor | None  # [nW, 1, w^2, w^2] with 0 / SHIFT_MASK_VALUE, None without shift


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


def _build_geometry(grid: int, window_size: int, shifted: bool, device) -> WindowGeometry:
    window, shift = window_and_shift(grid, window_size, shifted)
    padded = math.ceil(grid / window) * window
    mask = shift_mask_table(padded, window, shift, device) if shift else None
    return WindowGeometry(
        window, shift, padded, coords_table(window, device), relative_index(window, device), mask
    )


_GEOMETRY_CACHE: dict[tuple, WindowGeometry] = {}


def window_geometry(grid: int, window_size: int, shifted: bool, device) -> WindowGeometry:
    """Geometry constants, cached per (grid, window, shift, device); traced afresh under torch.compile."""
    if torch.compiler.is_compiling():
        return _build_geometry(grid, window_size, shifted, device)
    key = (grid, window_size, shifted, torch.device(device))
    if key not in _GEOMETRY_CACHE:
        _GEOMETRY_CACHE[key] = _build_geometry(grid, window_size, shifted, device)
    return _GEOMETRY_CACHE[key]


def _plain_eager(x: torch.Tensor) -> bool:
    """Neither compiling, nor under a torch.func transform, nor autocast: a hand-written Function may run."""
    return not (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch.is_autocast_enabled(x.device.type)
    )


def _unit_rows(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`F.normalize(x, dim=-1) * scale` (same eps), with a several times cheaper backward."""
    inv = torch.rsqrt(x.square().sum(dim=-1, keepdim=True).clamp_min(1e-24))
    return x * (inv if scale is None else inv * scale)


class ScaledCosineSelfAttention(nn.Module):
    """Parameters and score computation of one Swin-V2 attention (keys as HF `Swinv2SelfAttention`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.continuous_position_bias_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self._mask_cache: dict[tuple, tuple[tuple[int, ...], torch.Tensor]] = {}

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

    def position_bias(self, geometry: WindowGeometry) -> torch.Tensor:
        """16*sigmoid(CPB) gathered to [h, N, N]."""
        return continuous_position_bias(
            geometry.coords_table, geometry.index, self.continuous_position_bias_mlp, self.num_heads
        )

    def _position_bias_trains(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self.continuous_position_bias_mlp.parameters()
        )

    def additive_mask(self, geometry: WindowGeometry, dtype: torch.dtype) -> torch.Tensor:
        """Position bias plus shift mask, [nW or 1, h, N, N]; cached while the CPB weights are unchanged, unless
        they are being trained."""
        cacheable = not self._position_bias_trains() and not torch.compiler.is_compiling()
        if cacheable:
            key = (geometry.padded, geometry.window, geometry.shift, geometry.index.device, dtype)
            versions = tuple(p._version for p in self.continuous_position_bias_mlp.parameters())
            hit = self._mask_cache.get(key)
            if hit is not None and hit[0] == versions:
                return hit[1]
        mask = self.position_bias(geometry).to(dtype).unsqueeze(0)
        if geometry.shift_mask is not None:
            mask = mask + geometry.shift_mask.to(dtype)
        if cacheable:
            self._mask_cache[key] = (versions, mask)
        return mask

    def forward(self, windows: torch.Tensor, geometry: WindowGeometry) -> torch.Tensor:
        """windows [B, nW, N, C] -> attended values [B, nW, N, C]."""
        b, nw, n, c = windows.shape
        h = self.num_heads
        q, k, v = self._project(windows).view(b * nw, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        scale = torch.exp(torch.clamp(self.logit_scale, max=_MAX_LOGIT_SCALE)).to(q.dtype)
        q, k = _unit_rows(q, scale), _unit_rows(k)
        dropout = self.dropout if self.training else 0.0
        mask = self.additive_mask(geometry, q.dtype)  # [nW or 1, h, N, N]
        if q.device.type == "cpu" and self._position_bias_trains():
            # CPU SDPA kernels differentiate an additive mask several times slower than explicit matmuls.
            if dropout == 0.0 and _plain_eager(q):
                out = chunked_window_attention(q, k, v, mask, nw)
            else:
                scores = (q @ k.transpose(-2, -1)).view(b, nw, h, n, n) + mask
                probs = F.dropout(torch.softmax(scores, dim=-1), dropout, self.training)
                out = probs.view(b * nw, h, n, n) @ v
        else:
            if mask.shape[0] > 1:
                mask = mask.unsqueeze(0).expand(b, nw, h, n, n).reshape(b * nw, h, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        return out.transpose(1, 2).reshape(b, nw, n, c)


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
        self.self = ScaledCosineSelfAttention(
            dim, num_heads, config.qkv_bias, config.attention_probs_dropout_prob
        )
        self.output = AttentionOutput(dim, config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        """x [B, grid*grid, C] -> [B, grid*grid, C]."""
        b, _, c = x.shape
        geo = window_geometry(grid, self.window_size, self.shifted, x.device)
        w, s, p = geo.window, geo.shift, geo.padded
        x = x.view(b, grid, grid, c)
        if p != grid:
            x = F.pad(x, (0, 0, 0, p - grid, 0, p - grid))
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        n = p // w
        windows = x.view(b, n, w, n, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, w * w, c)
        windows = self.output(self.self(windows, geo))
        x = windows.view(b, n, n, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, p, p, c)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if p != grid:
            x = x[:, :grid, :grid, :]
        return x.reshape(b, grid * grid, c)
