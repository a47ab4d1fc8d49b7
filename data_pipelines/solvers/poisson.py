"""Steady Poisson, -Laplace(s) = f on the periodic unit square (zero-mean f and s), solved in Fourier space."""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid


def solve_poisson(grid: SpectralGrid, f: torch.Tensor) -> torch.Tensor:
    """The zero-mean solution of -Laplace(s) = f - mean(f) for ``f[B, H, W]``."""
    k2 = torch.where(grid.k2 == 0, 1.0, grid.k2)
    return grid.ifft(grid.fft(f) / k2 * (grid.k2 != 0))


@register_family
class Poisson(PDEFamily):
    name = "poisson"
    fields = ("f", "s")
    coefficient_ranges = {}
    horizon = 1.0
    steady = True
    description = (
        "Steady -Laplace(s) = f (PDEgym Poisson-Gauss): f = sum of K ~ U{2..8} periodic gaussians with "
        "amplitudes ~ U[-1, 1], widths ~ U[0.03, 0.1], centres ~ U[0,1]^2, minus its mean. Snapshot 0 holds "
        "(f, 0), snapshot 1 holds (f, s)."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        k_max, b = 8, req.batch
        count = req.rng.integers(2, k_max, b)
        active = (torch.arange(k_max, device=req.device)[None, :] < count[:, None]).to(req.dtype)
        amp = req.rng.uniform(-1, 1, b, k_max) * active
        width = req.rng.uniform(0.03, 0.1, b, k_max)[..., None, None]
        cx, cy = req.rng.uniform(0, 1, b, k_max), req.rng.uniform(0, 1, b, k_max)
        dx = torch.remainder(grid.x - cx[..., None, None] + 0.5, 1.0) - 0.5
        dy = torch.remainder(grid.y - cy[..., None, None] + 0.5, 1.0) - 0.5
        f = (amp[..., None, None] * torch.exp(-(dx**2 + dy**2) / (2 * width**2))).sum(1)
        f = f - f.mean(dim=(-2, -1), keepdim=True)
        s = solve_poisson(grid, f)
        u = torch.stack([torch.stack([f, torch.zeros_like(s)], 1), torch.stack([f, s], 1)], 1)
        return u, {}
