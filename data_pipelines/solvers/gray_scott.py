"""Gray-Scott reaction-diffusion (two species a, b), pseudo-spectral IF-RK4.

a_t = Da Laplace(a) - a b^2 + F (1 - a),   b_t = Db Laplace(b) + a b^2 - (F + k) b
"""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid, integrate_if_rk4

_MAX_DT = 2.0


def solve_gray_scott(grid: SpectralGrid, ab0: torch.Tensor, coeffs: dict, times: torch.Tensor, dt=None):
    """Evolve ``ab0[B, 2, H, W]`` with coefficient tensors ``Db, feed, kill`` ([B]; Da = 2 Db)."""
    feed, kill = coeffs["feed"][:, None, None], coeffs["kill"][:, None, None]

    def nonlinear(q_hat):
        q = grid.ifft(q_hat)
        a, b = q[:, 0], q[:, 1]
        ab2 = a * b * b
        return grid.fft(torch.stack([-ab2 + feed * (1 - a), ab2 - (feed + kill) * b], dim=1)) * grid.dealias

    diff = torch.stack([2 * coeffs["Db"], coeffs["Db"]], dim=1)[:, :, None, None]
    states = integrate_if_rk4(grid.fft(ab0), -diff * grid.k2, nonlinear, times, lambda _: _MAX_DT, dt)
    return torch.stack([grid.ifft(s) for s in states], dim=1)


@register_family
class GrayScott(PDEFamily):
    name = "gray_scott"
    fields = ("a", "b")
    coefficient_ranges = {"feed": (0.02, 0.05), "kill": (0.0467, 0.0681), "Db": (1e-5, 3e-5)}
    horizon = 1000.0
    description = (
        "Gray-Scott in Pearson's pattern-forming band: feed F ~ U[0.02, 0.05], kill k = sqrt(F)/2 - F + d "
        "with d ~ U[-0.002, 0.006] (around the saddle-node line), Db ~ U[1e-5, 3e-5], Da = 2 Db; a0 = 1 - 2 b0, b0 = 0.25 tanh(sum of K ~ U{1..6} periodic unit gaussian bumps "
        "of width ~ U[0.04, 0.1] + 0.01 (1 + n)), n a smooth random field in [-1, 1] (|k|/2pi <= 8)."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        coeffs["kill"] = (
            coeffs["feed"].sqrt() / 2 - coeffs["feed"] + req.rng.uniform(-0.002, 0.006, req.batch)
        )
        k_max = 6
        count = req.rng.integers(1, k_max, req.batch)
        active = (torch.arange(k_max, device=req.device)[None, :] < count[:, None]).to(req.dtype)
        cx, cy = req.rng.uniform(0, 1, req.batch, k_max), req.rng.uniform(0, 1, req.batch, k_max)
        width = req.rng.uniform(0.04, 0.1, req.batch, k_max)
        dx = torch.remainder(grid.x - cx[..., None, None] + 0.5, 1.0) - 0.5
        dy = torch.remainder(grid.y - cy[..., None, None] + 0.5, 1.0) - 0.5
        bumps = active[..., None, None] * torch.exp(-(dx**2 + dy**2) / (2 * width[..., None, None] ** 2))
        noise = 0.01 * (1 + grid.smooth_random_field(req.rng, req.batch, 8.0, decay=0.0))
        b0 = 0.25 * torch.tanh(bumps.sum(1) + noise)
        ab0 = torch.stack([1 - 2 * b0, b0], dim=1)
        return solve_gray_scott(grid, ab0, coeffs, req.times, req.dt), coeffs
