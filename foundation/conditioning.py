"""Conditioned layer norms: Poseidon's time-conditioned LayerNorm, optionally also conditioned on the operator.

Poseidon: y = gamma(t) * LN(x) + beta(t) with gamma, beta = Linear(1, d)(t) (keys `weight.*` / `bias.*`).
pdefm's operator conditioning adds a zero-initialised Linear(E, 2d) of an embedding of the PDE family and its
coefficients, so a conditioned model starts out computing exactly what the unconditioned one does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OperatorModulation(nn.Linear):
    """Linear(E, 2d) from the operator embedding to (delta gamma, delta beta); initialised to zero."""


class TimeScale(nn.Linear):
    """Linear(1, d): the lead-time-dependent scale gamma(t) = W t + b of a time-conditioned norm."""


class TimeConditionedNorm(nn.Module):
    """LayerNorm without affine parameters whose scale and shift are affine functions of the lead time."""

    def __init__(self, dim: int, eps: float = 1e-5, operator_dim: int = 0):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = TimeScale(1, dim)
        self.bias = nn.Linear(1, dim)
        self.operator = OperatorModulation(operator_dim, 2 * dim) if operator_dim else None

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, operator: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, ..., d], time [B, 1], operator [B, E] (only with operator conditioning)."""
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        time = time.to(x.dtype)
        gamma = torch.addcmul(self.weight.bias, time, self.weight.weight.t())  # Linear(1, d)(t), one op
        beta = torch.addcmul(self.bias.bias, time, self.bias.weight.t())
        if self.operator is not None:
            d_gamma, d_beta = self.operator(operator.to(x.dtype)).chunk(2, dim=-1)
            gamma, beta = gamma + d_gamma, beta + d_beta
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.dim,)
        return torch.addcmul(beta.view(shape), x, gamma.view(shape))


class UnconditionedLayerNorm(nn.LayerNorm):
    """Plain LayerNorm with the conditioned norm's call signature (Poseidon with `use_conditioning=False`)."""

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, operator: torch.Tensor | None = None
    ) -> torch.Tensor:
        return super().forward(x)


def make_norm(config, dim: int) -> nn.Module:
    """The norm used everywhere in scOT, as the config asks for it."""
    if not config.use_conditioning:
        return UnconditionedLayerNorm(dim, eps=config.layer_norm_eps)
    operator_dim = config.operator_embed_dim if config.use_operator_conditioning else 0
    return TimeConditionedNorm(dim, eps=config.layer_norm_eps, operator_dim=operator_dim)


class OperatorEmbedding(nn.Module):
    """Embeds (PDE family id, coefficients scaled to [0,1]) into one vector per sample."""

    def __init__(self, num_families: int, num_coefficients: int, dim: int):
        super().__init__()
        self.family = nn.Embedding(num_families, dim)
        self.mlp = nn.Sequential(nn.Linear(dim + num_coefficients, dim), nn.GELU(), nn.Linear(dim, dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """O(1) features (unit-normal family vectors, PyTorch's default Linear init) rather than the 0.02-std
        transformer init, so the zero-initialised modulations receive useful gradients from the first step."""
        self.family.weight.normal_()
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, pde_id: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        family = self.family(pde_id)
        return self.mlp(torch.cat([family, coefficients.to(family.dtype)], dim=-1))
