"""Viscous 2D Burgers, u_t + (u . grad) u = nu Laplace(u) for u = (u, v), pseudo-spectral IF-RK4."""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid, integrate_if_rk4

_CFL = 1.0


def solve_burgers(grid: SpectralGrid, uv0: torch.Tensor, nu: torch.Tensor, times: torch.Tensor, dt=None):
    """Evolve the velocity ``uv0[B, 2, H, W]`` with viscosities ``nu[B]``; returns [B, T, 2, H, W]."""

    def nonlinear(q_hat):
        q = grid.ifft(q_hat)
        qx, qy = grid.grad(q_hat)
        return -grid.fft(q[:, :1] * qx + q[:, 1:] * qy) * grid.dealias

    def max_dt(q_hat):
        q = grid.ifft(q_hat)
        return _CFL / grid.n / float((q[:, 0].abs() + q[:, 1].abs()).max().clamp_min(1e-6))

    linear = -nu[:, None, None, None] * grid.k2
    states = integrate_if_rk4(grid.fft(uv0) * grid.dealias, linear, nonlinear, times, max_dt, dt)
    return torch.stack([grid.ifft(s) for s in states], dim=1)


@register_family
class Burgers(PDEFamily):
    name = "burgers"
    fields = ("u", "v")
    coefficient_ranges = {"nu": (5e-3, 3e-2), "amplitude": (0.25, 1.0)}
    log_coefficients = ("nu",)
    horizon = 1.0
    description = (
        "u_t + (u . grad) u = nu Laplace(u), u = (u, v); each component a smooth random field (|k|/2pi <= 4, "
        "spectrum (1+|k|/2pi)^-2) scaled to max |.| = amplitude ~ U[0.25, 1]; nu ~ logU[5e-3, 3e-2]."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        uv0 = grid.smooth_random_field(req.rng, 2 * req.batch, 4.0).reshape(req.batch, 2, grid.n, grid.n)
        uv0 = uv0 * coeffs["amplitude"][:, None, None, None]
        return solve_burgers(grid, uv0, coeffs["nu"], req.times, req.dt), coeffs
