"""Steady screened Helmholtz with a variable coefficient, -Laplace(s) + omega^2 c(x) s = f, periodic.

The operator is symmetric positive definite, so a batched conjugate-gradient solve preconditioned by the
constant-coefficient inverse (diagonal in Fourier space) converges in a few dozen iterations.
"""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid

_RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


CHECK_EVERY = 16
"""CG iterations between two host checks of convergence (one sync each)."""


def solve_helmholtz(grid: SpectralGrid, c: torch.Tensor, omega: torch.Tensor, f: torch.Tensor, max_iter=500):
    """Solve (-Laplace + omega^2 c) s = f for ``c, f [B, H, W]`` (c > 0), ``omega [B]``, by preconditioned CG.

    A sample stops changing once its residual is below tolerance (so its result does not depend on the
    rest of the batch); the host checks whether all have converged every ``CHECK_EVERY`` iterations.
    """
    w2c = omega[:, None, None] ** 2 * c
    shift = w2c.mean(dim=(-2, -1), keepdim=True)

    def apply(s):
        return grid.ifft(grid.k2 * grid.fft(s)) + w2c * s

    def precondition(r):
        return grid.ifft(grid.fft(r) / (grid.k2 + shift))

    def dot(a, b):
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    s = precondition(f)
    r = f - apply(s)
    z = precondition(r)
    p, rz = z, dot(r, z)
    tolerance = _RTOL[f.dtype] * dot(f, f).sqrt().clamp_min(1e-30)
    done = dot(r, r).sqrt() <= tolerance
    zero = torch.zeros_like(rz)
    for iteration in range(max_iter):
        if iteration % CHECK_EVERY == 0 and bool(done.all()):
            return s
        ap = apply(p)
        alpha = torch.where(done, zero, rz / dot(p, ap))
        s, r = s + alpha * p, r - alpha * ap
        z = precondition(r)
        rz_new = dot(r, z)
        p, rz = z + torch.where(done, zero, rz_new / rz) * p, rz_new
        done = done | (dot(r, r).sqrt() <= tolerance)
    if bool(done.all()):
        return s
    raise RuntimeError(f"helmholtz: CG did not converge in {max_iter} iterations")


@register_family
class Helmholtz(PDEFamily):
    name = "helmholtz"
    fields = ("c", "f", "s")
    coefficient_ranges = {"omega": (2.0, 20.0), "contrast": (0.0, 1.0)}
    horizon = 1.0
    steady = True
    description = (
        "Steady -Laplace(s) + omega^2 c s = f (positive-definite Helmholtz), omega ~ U[2, 20]; "
        "c = exp(contrast g), g a smooth random field in [-1, 1] (|k|/2pi <= 3), contrast ~ U[0, 1]; "
        "f a smooth random field (|k|/2pi <= 6, spectrum (1+|k|/2pi)^-1, max |f| = 1). "
        "Snapshot 0 holds (c, f, 0), snapshot 1 holds (c, f, s)."
    )

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        c = torch.exp(coeffs["contrast"][:, None, None] * grid.smooth_random_field(req.rng, req.batch, 3.0))
        f = grid.smooth_random_field(req.rng, req.batch, 6.0, decay=1.0)
        s = solve_helmholtz(grid, c, coeffs["omega"], f)
        u = torch.stack([torch.stack([c, f, torch.zeros_like(s)], 1), torch.stack([c, f, s], 1)], 1)
        return u, coeffs
