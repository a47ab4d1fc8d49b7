"""Linear advection by a steady, variable, divergence-free velocity: s_t + div(a s) = 0 (pseudo-spectral)."""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid, integrate_if_rk4

_CFL = 1.0


def solve_advection(
    grid: SpectralGrid, s0: torch.Tensor, a_u: torch.Tensor, a_v: torch.Tensor, times: torch.Tensor, dt=None
) -> torch.Tensor:
    """Advect ``s0[B, H, W]`` by the velocity ``(a_u, a_v)`` (conservative form, mass exact); [B, T, H, W]."""
    speed = float((a_u.abs() + a_v.abs()).max().clamp_min(1e-6))

    def nonlinear(s_hat):
        s = grid.ifft(s_hat)
        return -(grid.ikx * grid.fft(a_u * s) + grid.iky * grid.fft(a_v * s)) * grid.dealias

    zero = torch.zeros_like(grid.k2)
    states = integrate_if_rk4(grid.fft(s0), zero, nonlinear, times, lambda _: _CFL / grid.n / speed, dt)
    return torch.stack([grid.ifft(s) for s in states], dim=1)


@register_family
class Advection(PDEFamily):
    name = "advection"
    fields = ("s", "u", "v")
    coefficient_ranges = {"speed": (0.25, 1.5)}
    horizon = 1.0
    description = (
        "s_t + div(a s) = 0 with a = (psi_y, -psi_x) steady; psi a smooth random field (|k|/2pi <= 3, "
        "spectrum (1+|k|/2pi)^-2) scaled so max |a| = speed ~ U[0.25, 1.5]; s0 a smooth random field "
        "(|k|/2pi <= 6, spectrum (1+|k|/2pi)^-1, max |s0| = 1). Channels s and the velocity (u, v)."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        psi_hat = grid.fft(grid.smooth_random_field(req.rng, req.batch, 3.0))
        a_u, a_v = grid.ifft(grid.iky * psi_hat), -grid.ifft(grid.ikx * psi_hat)
        scale = coeffs["speed"][:, None, None] / torch.sqrt(a_u**2 + a_v**2).amax(dim=(-2, -1), keepdim=True)
        a_u, a_v = a_u * scale, a_v * scale
        s0 = grid.smooth_random_field(req.rng, req.batch, 6.0, decay=1.0)
        s = solve_advection(grid, s0, a_u, a_v, req.times, req.dt)
        vel = torch.stack([a_u, a_v], dim=1)[:, None].expand(-1, s.shape[1], -1, -1, -1)
        return torch.cat([s[:, :, None], vel], dim=2), coeffs
