"""Incompressible Navier-Stokes in vorticity form, pseudo-spectral (2/3 dealiasing, integrating-factor RK4).

    w_t + u . grad w = nu Laplace(w) + f,   u = (psi_y, -psi_x),   -Laplace(psi) = w,

on the periodic unit square. Output channels are the velocity (u, v); the forced variant adds f.
Initial data (sines, gaussians, shear layer, piecewise constant) follow PDEgym's NS sets.
"""

from __future__ import annotations

import math

import torch

from data_pipelines.solvers.base import PDEFamily, Sampler, SolveRequest
from data_pipelines.solvers.registry import register_family
from data_pipelines.solvers.spectral import SpectralGrid, integrate_if_rk4

_NU_RANGE = (4e-4, 4e-3)
_CFL = 0.8


def solve_vorticity(
    grid: SpectralGrid,
    w0: torch.Tensor,
    nu: torch.Tensor,
    times: torch.Tensor,
    forcing: torch.Tensor | None = None,
    dt: float | None = None,
) -> torch.Tensor:
    """Evolve vorticity ``w0[B, H, W]`` with viscosities ``nu[B]`` (and forcing ``[B, H, W]``) and return
    the velocity ``[B, T, 2, H, W]`` at ``times``."""
    f_hat = None if forcing is None else grid.fft(forcing) * grid.dealias
    h = 1.0 / grid.n

    def nonlinear(w_hat: torch.Tensor) -> torch.Tensor:
        u, v = grid.velocity_from_vorticity(w_hat)
        wx, wy = grid.grad(w_hat)
        n_hat = -grid.fft(u * wx + v * wy) * grid.dealias
        return n_hat if f_hat is None else n_hat + f_hat

    def max_dt(w_hat: torch.Tensor) -> float:
        u, v = grid.velocity_from_vorticity(w_hat)
        return _CFL * h / float((u.abs() + v.abs()).max().clamp_min(1e-6))

    w_hat = grid.fft(w0) * grid.dealias
    states = integrate_if_rk4(w_hat, -nu[:, None, None] * grid.k2, nonlinear, times, max_dt, dt)
    return torch.stack([torch.stack(grid.velocity_from_vorticity(s), dim=1) for s in states], dim=1)


def vorticity_of(grid: SpectralGrid, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = v_x - u_y of a (possibly divergent) velocity; its velocity is the divergence-free projection."""
    return grid.ifft(grid.ikx * grid.fft(v) - grid.iky * grid.fft(u))


def _scale_to_speed(grid: SpectralGrid, w: torch.Tensor, speed: float) -> torch.Tensor:
    u, v = grid.velocity_from_vorticity(grid.fft(w))
    vmax = torch.sqrt(u**2 + v**2).amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    return w * (speed / vmax)


class _NavierStokes(PDEFamily):
    """Shared solve: sample nu (log-uniform) and the initial vorticity, then integrate."""

    fields = ("u", "v")
    horizon = 1.0
    log_coefficients = ("nu",)

    def initial_vorticity(self, grid: SpectralGrid, rng: Sampler, batch: int, coeffs: dict) -> torch.Tensor:
        raise NotImplementedError

    def forcing(self, grid: SpectralGrid, coeffs: dict) -> torch.Tensor | None:
        return None

    def solve(self, req: SolveRequest):
        grid = SpectralGrid(req.resolution, req.device, req.dtype)
        coeffs = self.sample_coefficients(req.rng, req.batch)
        w0 = self.initial_vorticity(grid, req.rng, req.batch, coeffs)
        f = self.forcing(grid, coeffs)
        vel = solve_vorticity(grid, w0, coeffs["nu"], req.times, f, req.dt)
        if f is not None:
            vel = torch.cat([vel, f[:, None, None].expand(-1, vel.shape[1], 1, -1, -1)], dim=2)
        return vel, coeffs


@register_family
class NSSines(_NavierStokes):
    name = "ns_sines"
    coefficient_ranges = {"nu": _NU_RANGE}
    description = (
        "NS, sines: w0 = sum_{p,q=1..6} a_pq sin(2pi p x + phi_pq) sin(2pi q y + chi_pq) / (p^2+q^2), "
        "a ~ N(0,1), phases ~ U[0,2pi); velocity scaled to max speed 1; nu ~ logU[4e-4, 4e-3]."
    )

    def initial_vorticity(self, grid, rng, batch, coeffs):
        m = 6
        p = torch.arange(1, m + 1, device=grid.device, dtype=grid.dtype)
        a = rng.normal(batch, m, m) / (p[:, None] ** 2 + p[None, :] ** 2)
        phi, chi = rng.uniform(0, 2 * math.pi, batch, m, m), rng.uniform(0, 2 * math.pi, batch, m, m)
        sx = torch.sin(2 * math.pi * p[None, :, None, None, None] * grid.x + phi[..., None, None])
        sy = torch.sin(2 * math.pi * p[None, None, :, None, None] * grid.y + chi[..., None, None])
        w = (a[..., None, None] * sx * sy).sum(dim=(1, 2))
        return _scale_to_speed(grid, w, 1.0)


@register_family
class NSGauss(_NavierStokes):
    name = "ns_gauss"
    coefficient_ranges = {"nu": _NU_RANGE}
    description = (
        "NS, gaussians: w0 = sum of K ~ U{2..8} periodic gaussian vortices, centres ~ U[0,1]^2, widths "
        "sigma ~ U[0.05, 0.12], strengths ~ N(0,1); mean removed; velocity scaled to max speed 1; "
        "nu ~ logU[4e-4, 4e-3]."
    )

    def initial_vorticity(self, grid, rng, batch, coeffs):
        k_max = 8
        count = rng.integers(2, k_max, batch)
        active = (torch.arange(k_max, device=grid.device)[None, :] < count[:, None]).to(grid.dtype)
        cx, cy = rng.uniform(0, 1, batch, k_max), rng.uniform(0, 1, batch, k_max)
        sigma, amp = rng.uniform(0.05, 0.12, batch, k_max), rng.normal(batch, k_max) * active
        dx = torch.remainder(grid.x - cx[..., None, None] + 0.5, 1.0) - 0.5
        dy = torch.remainder(grid.y - cy[..., None, None] + 0.5, 1.0) - 0.5
        w = (amp[..., None, None] * torch.exp(-(dx**2 + dy**2) / (2 * sigma[..., None, None] ** 2))).sum(1)
        return _scale_to_speed(grid, w - w.mean(dim=(-2, -1), keepdim=True), 1.0)


@register_family
class NSShearLayer(_NavierStokes):
    name = "ns_shear_layer"
    coefficient_ranges = {"nu": _NU_RANGE, "thickness": (0.025, 0.1)}
    description = (
        "NS, double shear layer: u0 = tanh((y-1/4)/rho) for y <= 1/2, tanh((3/4-y)/rho) above, "
        "v0 = 0.05 sum_{k=1..4} a_k sin(2pi k x + phi_k), a ~ U[0,1], phi ~ U[0,2pi); thickness "
        "rho ~ U[0.025, 0.1]; nu ~ logU[4e-4, 4e-3]."
    )

    def initial_vorticity(self, grid, rng, batch, coeffs):
        rho = coeffs["thickness"][:, None, None]
        u = torch.where(grid.y <= 0.5, torch.tanh((grid.y - 0.25) / rho), torch.tanh((0.75 - grid.y) / rho))
        k = torch.arange(1, 5, device=grid.device, dtype=grid.dtype)
        a, phi = rng.uniform(0, 1, batch, 4), rng.uniform(0, 2 * math.pi, batch, 4)
        v = 0.05 * (
            a[..., None, None] * torch.sin(2 * math.pi * k[:, None, None] * grid.x + phi[..., None, None])
        )
        return vorticity_of(grid, u, v.sum(1))


@register_family
class NSPiecewiseConstant(_NavierStokes):
    name = "ns_pwc"
    coefficient_ranges = {"nu": _NU_RANGE}
    description = (
        "NS, piecewise constant: (u0, v0) constant on each cell of a p x p partition, p ~ U{2..6}, values "
        "~ U[-1,1], mollified by a gaussian of width 0.01 and projected to divergence-free; "
        "nu ~ logU[4e-4, 4e-3]."
    )

    def initial_vorticity(self, grid, rng, batch, coeffs):
        p_max = 6
        p = rng.integers(2, p_max, batch)[:, None, None]
        vals = rng.uniform(-1, 1, batch, 2, p_max * p_max)
        cell = (torch.floor(grid.y * p) * p + torch.floor(grid.x * p)).long().clamp_max(p_max * p_max - 1)
        idx = cell.flatten(1)[:, None, :].expand(-1, 2, -1)
        uv = torch.gather(vals, 2, idx).reshape(batch, 2, grid.n, grid.n)
        mollify = torch.exp(-0.5 * (0.01**2) * grid.k2)
        uv = grid.ifft(grid.fft(uv) * mollify)
        return vorticity_of(grid, uv[:, 0], uv[:, 1])


@register_family
class NSKolmogorov(_NavierStokes):
    name = "ns_kolmogorov"
    fields = ("u", "v", "f")
    coefficient_ranges = {"nu": _NU_RANGE, "forcing": (0.05, 0.5)}
    description = (
        "NS with Kolmogorov-type forcing f = A sin(2pi(x+y)) (PDEgym FNS-KF uses A = 0.1), A ~ U[0.05, 0.5]; "
        "w0 a smooth random field (|k|/2pi <= 4, spectrum (1+|k|/2pi)^-2) with max speed 0.5; "
        "nu ~ logU[4e-4, 4e-3]. Channels u, v and the forcing f."
    )

    def initial_vorticity(self, grid, rng, batch, coeffs):
        return _scale_to_speed(grid, grid.smooth_random_field(rng, batch, 4.0), 0.5)

    def forcing(self, grid, coeffs):
        return coeffs["forcing"][:, None, None] * torch.sin(2 * math.pi * (grid.x + grid.y))
