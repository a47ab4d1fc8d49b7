"""Random sums of periodic gaussian bumps on the unit square: the wave pulses, wave-speed bumps and
shallow-water dam-break mounds of the hyperbolic families."""

from __future__ import annotations

import torch

from data_pipelines.solvers.base import Sampler

Tensor = torch.Tensor


def cell_centres(n: int, device: torch.device | str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(y, x) cell-centre coordinates ``[n, n]`` of the uniform n x n grid on [0, 1)^2 (rows are y)."""
    c = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
    return torch.meshgrid(c, c, indexing="ij")


def periodic_offset(x: Tensor, centre: Tensor) -> Tensor:
    """Signed periodic distance ``x - centre`` folded into [-1/2, 1/2)."""
    return torch.remainder(x - centre + 0.5, 1.0) - 0.5


def gaussian_bumps(
    rng: Sampler,
    batch: int,
    n: int,
    count: tuple[int, int],
    amplitude: Tensor,
    width: tuple[float, float],
) -> Tensor:
    """``[batch, n, n]`` sums of ``K ~ U{count}`` periodic gaussians exp(-r^2 / (2 s^2)).

    Centres are uniform on the square, widths ``s ~ U[width]`` and amplitudes are given per bump as
    ``amplitude [batch, count[1]]`` (bumps beyond a trajectory's K are dropped).
    """
    kmax = count[1]
    active = torch.arange(kmax, device=rng.device)[None, :] < rng.integers(count[0], count[1], batch)[:, None]
    cx, cy = rng.uniform(0.0, 1.0, batch, kmax), rng.uniform(0.0, 1.0, batch, kmax)
    s = rng.uniform(width[0], width[1], batch, kmax)
    y, x = cell_centres(n, rng.device, rng.dtype)
    dx = periodic_offset(x[None, None], cx[..., None, None])
    dy = periodic_offset(y[None, None], cy[..., None, None])
    g = torch.exp(-(dx * dx + dy * dy) / (2.0 * (s * s)[..., None, None]))
    return (g * (amplitude * active)[..., None, None]).sum(dim=1)
