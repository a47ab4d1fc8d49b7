"""Compressible Euler equations of an ideal gas (gamma = 1.4) on the periodic unit square, finite volume.

Fields ``[rho, u, v, p]``. HLLC fluxes on minmod-MUSCL primitive reconstructions with SSP-RK3 and a
CFL-adaptive step (``finite_volume``): mass, momentum and total energy are conserved to round-off.
"""

from __future__ import annotations

import math

import torch

from data_pipelines.solvers.base import PDEFamily, Sampler, SolveRequest
from data_pipelines.solvers.finite_volume import evolve, hllc_flux
from data_pipelines.solvers.gaussian_bumps import cell_centres
from data_pipelines.solvers.registry import register_family

Tensor = torch.Tensor
GAMMA = 1.4


class IdealGasEuler:
    """2D compressible Euler equations of an ideal gas; primitives [rho, u, v, p], conserved [rho, rho u, rho v, E]."""

    def __init__(self, gamma: float = GAMMA) -> None:
        self.gamma = gamma

    def conservative(self, w: Tensor) -> Tensor:
        rho, u, v, p = w.unbind(1)
        energy = p / (self.gamma - 1.0) + 0.5 * rho * (u * u + v * v)
        return torch.stack([rho, rho * u, rho * v, energy], dim=1)

    def primitive(self, q: Tensor) -> Tensor:
        rho, mx, my, energy = q.unbind(1)
        u, v = mx / rho, my / rho
        p = (self.gamma - 1.0) * (energy - 0.5 * (mx * u + my * v))
        return torch.stack([rho, u, v, p], dim=1)

    def signal_speed(self, w: Tensor) -> Tensor:
        return torch.sqrt(self.gamma * w[:, 3] / w[:, 0])

    def _flux(self, w: Tensor, q: Tensor) -> Tensor:
        u, p = w[:, 1], w[:, 3]
        return torch.stack([q[:, 1], q[:, 1] * u + p, q[:, 2] * u, (q[:, 3] + p) * u], dim=1)

    def flux_x(self, wl: Tensor, wr: Tensor) -> Tensor:
        """HLLC flux with Davis wave-speed estimates."""
        ql, qr = self.conservative(wl), self.conservative(wr)
        rl, ul, pl = wl[:, 0], wl[:, 1], wl[:, 3]
        rr, ur, pr = wr[:, 0], wr[:, 1], wr[:, 3]
        al, ar = self.signal_speed(wl), self.signal_speed(wr)
        sl = torch.minimum(ul - al, ur - ar)
        sr = torch.maximum(ul + al, ur + ar)
        ml, mr = rl * (sl - ul), rr * (sr - ur)
        sstar = (pr - pl + ml * ul - mr * ur) / (ml - mr)
        return hllc_flux(
            ql,
            qr,
            self._flux(wl, ql),
            self._flux(wr, qr),
            self._star(wl, ql, sl, sstar),
            self._star(wr, qr, sr, sstar),
            sl,
            sr,
            sstar,
        )

    @staticmethod
    def _star(w: Tensor, q: Tensor, s: Tensor, sstar: Tensor) -> Tensor:
        rho, u, v, p = w.unbind(1)
        factor = rho * (s - u) / (s - sstar)
        energy = q[:, 3] / rho + (sstar - u) * (sstar + p / (rho * (s - u)))
        return factor.unsqueeze(1) * torch.stack([torch.ones_like(rho), sstar, v, energy], dim=1)


def quadrant_states(rng: Sampler, batch: int) -> dict[str, Tensor]:
    """Four independent states per trajectory: rho, p ~ U[0.1, 1], u, v ~ U[-0.5, 0.5], ``[B]`` each."""
    out = {}
    for quadrant in ("sw", "se", "nw", "ne"):
        out[f"rho_{quadrant}"] = rng.uniform(0.1, 1.0, batch)
        out[f"u_{quadrant}"] = rng.uniform(-0.5, 0.5, batch)
        out[f"v_{quadrant}"] = rng.uniform(-0.5, 0.5, batch)
        out[f"p_{quadrant}"] = rng.uniform(0.1, 1.0, batch)
    return out


@register_family
class EulerRiemann(PDEFamily):
    """Four-quadrant 2D Riemann problems of the compressible Euler equations (Poseidon CE-RP-like)."""

    name = "euler_riemann"
    fields = ("rho", "u", "v", "p")
    coefficient_ranges = {"x0": (0.25, 0.75), "y0": (0.25, 0.75)}
    horizon = 0.5
    description = (
        "Compressible Euler, ideal gas gamma = 1.4, periodic unit square, t in [0, 0.5]; HLLC finite "
        "volume, minmod MUSCL, SSP-RK3, CFL 0.4. Initial data: the square cut at x = x0, y = y0 "
        "(x0, y0 ~ U[0.25, 0.75]) into four constant states, each with rho, p ~ U[0.1, 1] and "
        "u, v ~ U[-0.5, 0.5] (periodicity adds the cuts at x = 0 and y = 0). Params also record the "
        "states (rho_sw, u_sw, ..., p_ne)."
    )

    def solve(self, req: SolveRequest) -> tuple[Tensor, dict[str, Tensor]]:
        coeffs = self.sample_coefficients(req.rng, req.batch)
        states = quadrant_states(req.rng, req.batch)
        y, x = cell_centres(req.resolution, req.device, req.dtype)
        east = x[None] >= coeffs["x0"][:, None, None]
        north = y[None] >= coeffs["y0"][:, None, None]
        w0 = []
        for var in ("rho", "u", "v", "p"):
            south = torch.where(east, states[f"{var}_se"][:, None, None], states[f"{var}_sw"][:, None, None])
            above = torch.where(east, states[f"{var}_ne"][:, None, None], states[f"{var}_nw"][:, None, None])
            w0.append(torch.where(north, above, south))
        u = evolve(torch.stack(w0, dim=1), IdealGasEuler(), req.times.tolist(), dt=req.dt)
        return u, {**coeffs, **states}


@register_family
class EulerKelvinHelmholtz(PDEFamily):
    """Kelvin-Helmholtz instability of two perturbed shear interfaces (Poseidon CE-KH-like)."""

    name = "euler_kh"
    fields = ("rho", "u", "v", "p")
    coefficient_ranges = {
        "density_ratio": (1.5, 3.0),
        "shear_speed": (0.5, 1.5),
        "pressure": (1.0, 2.5),
        "perturbation": (0.005, 0.03),
    }
    horizon = 1.0
    description = (
        "Compressible Euler, ideal gas gamma = 1.4, periodic unit square, t in [0, 1]; HLLC finite "
        "volume, minmod MUSCL, SSP-RK3, CFL 0.4. Initial data: a band 1/4 + eta_1(x) < y < 3/4 + "
        "eta_2(x) of density density_ratio ~ U[1.5, 3] and x-velocity +shear_speed/2 in a background "
        "of density 1 and x-velocity -shear_speed/2 (shear_speed ~ U[0.5, 1.5]), v = 0, uniform "
        "pressure ~ U[1, 2.5]; interfaces tanh-smoothed over width 0.005. eta_i = perturbation * "
        "sum_{k=1..4} a_k sin(2 pi k x + phi_k) / sum a_k, a_k ~ U[0, 1], phi_k ~ U[0, 2 pi], "
        "perturbation ~ U[0.005, 0.03]."
    )

    def solve(self, req: SolveRequest) -> tuple[Tensor, dict[str, Tensor]]:
        rng, batch, n = req.rng, req.batch, req.resolution
        coeffs = self.sample_coefficients(rng, batch)
        y, x = cell_centres(n, req.device, req.dtype)
        modes = torch.arange(1, 5, device=req.device, dtype=req.dtype)
        bands = []
        for _ in range(2):
            amp, phase = rng.uniform(0.0, 1.0, batch, 4), rng.uniform(0.0, 2 * math.pi, batch, 4)
            amp = amp / amp.sum(dim=1, keepdim=True)
            eta = amp[..., None] * torch.sin(
                2 * math.pi * modes[:, None] * x[0][None, None] + phase[..., None]
            )
            bands.append(coeffs["perturbation"][:, None] * eta.sum(dim=1))  # [B, n] over x
        lower, upper = 0.25 + bands[0][:, None, :], 0.75 + bands[1][:, None, :]
        inside = 0.5 * (torch.tanh((y[None] - lower) / 0.005) - torch.tanh((y[None] - upper) / 0.005))
        rho = 1.0 + (coeffs["density_ratio"][:, None, None] - 1.0) * inside
        half = 0.5 * coeffs["shear_speed"][:, None, None]
        u = -half + 2.0 * half * inside
        p = coeffs["pressure"][:, None, None].expand_as(rho)
        w0 = torch.stack([rho, u, torch.zeros_like(u), p], dim=1)
        return evolve(w0, IdealGasEuler(), req.times.tolist(), dt=req.dt), coeffs
