"""Shallow-water equations over a flat bottom on the periodic unit square, finite volume.

Fields ``[h, u, v]`` (depth and depth-averaged velocity). HLLC fluxes (Toro 2001) on minmod-MUSCL
primitive reconstructions with SSP-RK3 and a CFL-adaptive step (``finite_volume``): mass and
momentum are conserved to round-off; depths stay positive (no wetting/drying).
"""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import PDEFamily, SolveRequest
from data_pipelines.solvers.finite_volume import evolve, hllc_flux
from data_pipelines.solvers.gaussian_bumps import gaussian_bumps
from data_pipelines.solvers.registry import register_family

Tensor = torch.Tensor


class ShallowWater:
    """Flat-bottom shallow water with gravity ``g``; primitives [h, u, v], conserved [h, hu, hv]."""

    def __init__(self, gravity: float = 1.0) -> None:
        self.gravity = gravity

    def conservative(self, w: Tensor) -> Tensor:
        h, u, v = w.unbind(1)
        return torch.stack([h, h * u, h * v], dim=1)

    def primitive(self, q: Tensor) -> Tensor:
        h, mx, my = q.unbind(1)
        return torch.stack([h, mx / h, my / h], dim=1)

    def signal_speed(self, w: Tensor) -> Tensor:
        return torch.sqrt(self.gravity * w[:, 0])

    def _flux(self, w: Tensor) -> Tensor:
        h, u, v = w.unbind(1)
        hu = h * u
        return torch.stack([hu, hu * u + 0.5 * self.gravity * h * h, hu * v], dim=1)

    def flux_x(self, wl: Tensor, wr: Tensor) -> Tensor:
        """HLLC flux with Davis wave-speed estimates; the tangential velocity rides the contact."""
        hl, ul, vl = wl.unbind(1)
        hr, ur, vr = wr.unbind(1)
        al, ar = self.signal_speed(wl), self.signal_speed(wr)
        sl = torch.minimum(ul - al, ur - ar)
        sr = torch.maximum(ul + al, ur + ar)
        ml, mr = hl * (ul - sl), hr * (ur - sr)
        sstar = (sl * mr - sr * ml) / (mr - ml)

        def star(h: Tensor, u: Tensor, v: Tensor, s: Tensor) -> Tensor:
            factor = h * (s - u) / (s - sstar)
            return factor.unsqueeze(1) * torch.stack([torch.ones_like(h), sstar, v], dim=1)

        return hllc_flux(
            self.conservative(wl),
            self.conservative(wr),
            self._flux(wl),
            self._flux(wr),
            star(hl, ul, vl, sl),
            star(hr, ur, vr, sr),
            sl,
            sr,
            sstar,
        )


@register_family
class ShallowWaterBumps(PDEFamily):
    """Gaussian dam-break mounds spreading over a flat bottom."""

    name = "shallow_water"
    fields = ("h", "u", "v")
    coefficient_ranges = {"depth": (0.5, 1.5), "bump_height": (0.2, 1.0)}
    horizon = 1.0
    description = (
        "Shallow water over a flat bottom, g = 1, periodic unit square, t in [0, 1]; HLLC finite volume, "
        "minmod MUSCL, SSP-RK3, CFL 0.4. Initial data at rest: h = depth * (1 + sum_k a_k g_k) with "
        "depth ~ U[0.5, 1.5], K ~ U{1..4} periodic gaussian mounds g_k of width U[0.04, 0.12] and "
        "heights a_k = bump_height * U[0.3, 1], bump_height ~ U[0.2, 1]."
    )

    def solve(self, req: SolveRequest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng, batch, n = req.rng, req.batch, req.resolution
        coeffs = self.sample_coefficients(rng, batch)
        amp = coeffs["bump_height"][:, None] * rng.uniform(0.3, 1.0, batch, 4)
        h = coeffs["depth"][:, None, None] * (1.0 + gaussian_bumps(rng, batch, n, (1, 4), amp, (0.04, 0.12)))
        w0 = torch.stack([h, torch.zeros_like(h), torch.zeros_like(h)], dim=1)
        return evolve(w0, ShallowWater(), req.times.tolist(), dt=req.dt), coeffs
