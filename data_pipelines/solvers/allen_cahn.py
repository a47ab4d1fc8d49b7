"""Allen-Cahn phase separation, s_t = eps^2 Laplace(s) + s - s^3, pseudo-spectral IF-RK4."""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid, integrate_if_rk4

_MAX_DT = 0.05


def solve_allen_cahn(grid: SpectralGrid, s0: torch.Tensor, eps: torch.Tensor, times: torch.Tensor, dt=None):
    """Evolve ``s0[B, H, W]`` with interface widths ``eps[B]``; returns [B, T, H, W]."""

    def nonlinear(s_hat):
        s = grid.ifft(s_hat)
        return grid.fft(s - s**3) * grid.dealias

    linear = -(eps[:, None, None] ** 2) * grid.k2
    states = integrate_if_rk4(grid.fft(s0) * grid.dealias, linear, nonlinear, times, lambda _: _MAX_DT, dt)
    return torch.stack([grid.ifft(s) for s in states], dim=1)


@register_family
class AllenCahn(PDEFamily):
    name = "allen_cahn"
    fields = ("s",)
    coefficient_ranges = {"eps": (0.025, 0.06), "amplitude": (0.1, 1.0)}
    horizon = 5.0
    description = (
        "s_t = eps^2 Laplace(s) + s - s^3 with eps ~ U[0.025, 0.06]; s0 a smooth random field "
        "(|k|/2pi <= 6, spectrum (1+|k|/2pi)^-1) scaled to max |s0| = amplitude ~ U[0.1, 1]."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        s0 = grid.smooth_random_field(req.rng, req.batch, 6.0, decay=1.0) * coeffs["amplitude"][:, None, None]
        return solve_allen_cahn(grid, s0, coeffs["eps"], req.times, req.dt)[:, :, None], coeffs
