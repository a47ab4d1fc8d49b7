"""Acoustic wave equation u_tt = c(x)^2 Laplace(u) in variable media on the periodic unit square.

Fields ``[s, c]``: the displacement ``s`` (Poseidon's Wave-Layer/Wave-Gauss call it u; in pdefm's
field vocabulary ``u`` is the x-velocity) and the time-independent wave speed ``c``. Space: Fourier
pseudo-spectral Laplacian times c^2 (non-divergence form, not div(c^2 grad u)). Time: the 4th-order
symplectic Yoshida composition of velocity Verlet, which keeps the discrete energy
E = 1/2 sum(u_t^2 / c^2) + 1/2 sum(|grad u|^2) bounded with no drift. Initial velocity u_t = 0.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from data_pipelines.solvers.base import PDEFamily, Sampler, SolveRequest
from data_pipelines.solvers.gaussian_bumps import cell_centres, gaussian_bumps
from data_pipelines.solvers.registry import register_family

Tensor = torch.Tensor

_W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
YOSHIDA = (_W1, 1.0 - 2.0 * _W1, _W1)  # Verlet sub-step weights of the 4th-order composition
STABILITY = 1.0  # max |omega| dt: Verlet needs |omega h| < 2 and the largest Yoshida sub-step is 1.70 dt


def laplacian_symbol(height: int, width: int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """-|k|^2 on the real-FFT grid of the periodic unit square, ``[H, W//2+1]``."""
    ky = 2 * math.pi * torch.fft.fftfreq(height, d=1.0 / height, device=device, dtype=dtype)
    kx = 2 * math.pi * torch.fft.rfftfreq(width, d=1.0 / width, device=device, dtype=dtype)
    return -(ky[:, None] ** 2 + kx[None, :] ** 2)


def stable_dt(c: Tensor) -> float:
    """Step with omega_max dt = STABILITY, omega_max = max c * max |k| over the whole batch."""
    height, width = c.shape[-2:]
    k_max = math.pi * math.hypot(height, width)
    return STABILITY / (float(c.max()) * k_max)


def integrate_wave(
    u0: Tensor, v0: Tensor, c: Tensor, times: list[float], dt: float | None = None
) -> tuple[Tensor, Tensor]:
    """Solve u_tt = c^2 Laplace(u) from (u0, v0) ``[B, H, W]``; returns (u, u_t) ``[B, T, H, W]`` at ``times``.

    Each snapshot interval is split into equal Yoshida steps no longer than ``dt`` (default
    ``stable_dt(c)``).
    """
    if not (u0.shape == v0.shape == c.shape and u0.dim() == 3):
        raise ValueError(
            f"wave state: expected u0, v0, c of one shape [B, H, W], got "
            f"{tuple(u0.shape)}, {tuple(v0.shape)}, {tuple(c.shape)}"
        )
    height, width = u0.shape[-2:]
    symbol = laplacian_symbol(height, width, u0.device, u0.dtype)
    c2 = c * c
    step = stable_dt(c) if dt is None else dt

    def accel(u: Tensor) -> Tensor:
        return c2 * torch.fft.irfft2(symbol * torch.fft.rfft2(u), s=(height, width))

    u, v = u0, v0
    a = accel(u)
    us, vs = [u], [v]
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        n = max(1, math.ceil((t1 - t0) / step - 1e-9))
        h = (t1 - t0) / n
        for _ in range(n):
            for w in YOSHIDA:
                v = v + (0.5 * w * h) * a
                u = u + (w * h) * v
                a = accel(u)
                v = v + (0.5 * w * h) * a
        us.append(u)
        vs.append(v)
    return torch.stack(us, dim=1), torch.stack(vs, dim=1)


def gaussian_pulses(rng: Sampler, batch: int, n: int) -> Tensor:
    """Initial displacement: 1-4 periodic gaussian pulses, amplitude +-U[0.5, 1], width U[0.03, 0.08]."""
    sign = torch.where(rng.uniform(0.0, 1.0, batch, 4) < 0.5, -1.0, 1.0)
    return gaussian_bumps(rng, batch, n, (1, 4), sign * rng.uniform(0.5, 1.0, batch, 4), (0.03, 0.08))


class _WaveFamily(PDEFamily):
    """Shared solve of the wave families: sample the medium and the pulses, integrate, tile c over time."""

    fields = ("s", "c")
    horizon = 1.0

    @abstractmethod
    def medium(self, rng: Sampler, coeffs: dict[str, Tensor], batch: int, n: int) -> Tensor:
        """Wave speed ``[B, n, n]`` for the sampled coefficients."""

    def solve(self, req: SolveRequest) -> tuple[Tensor, dict[str, Tensor]]:
        coeffs = self.sample_coefficients(req.rng, req.batch)
        c = self.medium(req.rng, coeffs, req.batch, req.resolution)
        u0 = gaussian_pulses(req.rng, req.batch, req.resolution)
        u, _ = integrate_wave(u0, torch.zeros_like(u0), c, req.times.tolist(), req.dt)
        return torch.stack([u, c[:, None].expand_as(u)], dim=2), coeffs


@register_family
class WaveLayered(_WaveFamily):
    """Wave equation in a horizontally layered medium (Poseidon Wave-Layer-like)."""

    name = "wave_layered"
    coefficient_ranges = {"c_low": (0.3, 0.8), "contrast": (1.5, 3.0)}
    description = (
        "s_tt = c(y)^2 Laplace(s) for the displacement s (Poseidon's u), periodic unit square, t in [0, 1], "
        "s_t(0) = 0; Fourier Laplacian, "
        "4th-order symplectic (Yoshida) time steps. Medium: K ~ U{3..6} horizontal layers with interfaces "
        "at uniform random heights (wrapping periodically), speeds U[c_low, c_low*contrast] with c_low ~ "
        "U[0.3, 0.8], contrast ~ U[1.5, 3]; interfaces smoothed by a gaussian of width 0.01. Initial "
        "displacement: 1-4 periodic gaussian pulses, amplitude +-U[0.5, 1], width U[0.03, 0.08]."
    )

    def medium(self, rng: Sampler, coeffs: dict[str, Tensor], batch: int, n: int) -> Tensor:
        return layered_medium(rng, coeffs["c_low"], coeffs["contrast"], batch, n)


def layered_medium(
    rng: Sampler, c_low: Tensor, contrast: Tensor, batch: int, n: int, width: float = 0.01
) -> Tensor:
    """Periodic piecewise-constant c(y) of 3-6 layers, convolved analytically with a gaussian of ``width``.

    Layer k spans [y_k, y_{k+1}) of sorted uniform heights (the last wraps through y = 1); its smoothed
    indicator is a difference of error functions summed over the periodic images.
    """
    kmax = 6
    count = rng.integers(3, kmax, batch)
    heights = rng.uniform(0.0, 1.0, batch, kmax)
    active = torch.arange(kmax, device=rng.device)[None, :] < count[:, None]
    heights = torch.where(active, heights, torch.full_like(heights, 2.0)).sort(dim=1).values
    next_active = torch.zeros_like(active)
    next_active[:, :-1] = active[:, 1:]
    upper = torch.where(next_active, heights.roll(-1, 1), heights[:, :1] + 1.0)  # the last layer wraps
    speeds = c_low[:, None] * (1.0 + (contrast[:, None] - 1.0) * rng.uniform(0.0, 1.0, batch, kmax))
    y, _ = cell_centres(n, rng.device, rng.dtype)
    y = y[None, None, :, :1]  # [1, 1, n, 1]
    lo, hi = heights[..., None, None], upper[..., None, None]
    box = torch.zeros(batch, kmax, n, 1, device=rng.device, dtype=rng.dtype)
    scale = math.sqrt(2.0) * width
    for image in (-1.0, 0.0, 1.0):
        box = box + 0.5 * (torch.erf((y + image - lo) / scale) - torch.erf((y + image - hi) / scale))
    c = (box * (speeds * active)[..., None, None]).sum(dim=1)
    return c.expand(batch, n, n).contiguous()


@register_family
class WaveGauss(_WaveFamily):
    """Wave equation in a smooth medium of gaussian speed bumps (Poseidon Wave-Gauss-like)."""

    name = "wave_gauss"
    coefficient_ranges = {"c_background": (0.4, 1.0), "bump_strength": (0.2, 0.8)}
    description = (
        "s_tt = c(x, y)^2 Laplace(s) for the displacement s (Poseidon's u), periodic unit square, "
        "t in [0, 1], s_t(0) = 0; Fourier Laplacian, "
        "4th-order symplectic (Yoshida) time steps. Medium: c = c_background * exp(sum_k a_k g_k) with "
        "c_background ~ U[0.4, 1], K ~ U{2..6} periodic gaussians g_k of width U[0.05, 0.15] and "
        "a_k ~ U[-bump_strength, bump_strength], bump_strength ~ U[0.2, 0.8]. Initial displacement: 1-4 "
        "periodic gaussian pulses, amplitude +-U[0.5, 1], width U[0.03, 0.08]."
    )

    def medium(self, rng: Sampler, coeffs: dict[str, Tensor], batch: int, n: int) -> Tensor:
        strength = coeffs["bump_strength"][:, None]
        amp = strength * rng.uniform(-1.0, 1.0, batch, 6)
        return coeffs["c_background"][:, None, None] * torch.exp(
            gaussian_bumps(rng, batch, n, (2, 6), amp, (0.05, 0.15))
        )
