"""Compressible Euler equations of an ideal gas (gamma = 1.4) on the periodic unit square, finite volume.

Fields ``[rho, u, v, p]``. HLLC fluxes on minmod-MUSCL primitive reconstructions with SSP-RK3 and a
CFL-adaptive step (``finite_volume``): mass, momentum and total energy are conserved to round-off.
"""

from __future__ import annotations

import torch

from data_pipelines.solvers.finite_volume import hllc_flux

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
