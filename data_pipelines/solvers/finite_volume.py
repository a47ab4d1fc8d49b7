"""Shared finite-volume machinery for 2D periodic conservation laws (Euler, shallow water).

Second-order scheme: minmod-limited linear reconstruction of the primitive variables, an HLLC
approximate Riemann solver at every face, and the three-stage strong-stability-preserving Runge-Kutta
scheme (SSP-RK3, Shu & Osher 1988) with a CFL-adaptive step chosen per
trajectory. Flux differences telescope on the periodic grid, so the conserved totals change only
by round-off. States are ``[B, C, H, W]`` tensors: ``W`` is x (last axis), ``H`` is y; channel 1
is the x-velocity (or x-momentum) and channel 2 the y-velocity, so a y-sweep is an x-sweep with
those two channels swapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

Tensor = torch.Tensor


class ConservationLaw(Protocol):
    """What the scheme needs from a system whose channels 1 and 2 are the x and y velocities."""

    def conservative(self, w: Tensor) -> Tensor:
        """Primitive ``[B, C, H, W]`` -> conservative variables."""

    def primitive(self, q: Tensor) -> Tensor:
        """Conservative ``[B, C, H, W]`` -> primitive variables."""

    def flux_x(self, wl: Tensor, wr: Tensor) -> Tensor:
        """Numerical x-flux (conservative variables) between primitive face states ``[B, C, ...]``."""

    def signal_speed(self, w: Tensor) -> Tensor:
        """Sound (or gravity-wave) speed ``[B, ...]`` of primitive state ``w [B, C, ...]``."""


def minmod(a: Tensor, b: Tensor) -> Tensor:
    """minmod(a, b): the smaller-magnitude argument when signs agree, else 0 (TVD slope limiter)."""
    return torch.where(a * b > 0, torch.where(a.abs() < b.abs(), a, b), torch.zeros_like(a))


def muscl_faces(w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Left and right states at faces i+1/2 along ``dim`` from minmod-limited linear reconstruction.

    Face values lie between neighbouring cell values, so positive primitives stay positive.
    """
    slope = minmod(w - w.roll(1, dim), w.roll(-1, dim) - w)
    return w + 0.5 * slope, (w - 0.5 * slope).roll(-1, dim)


def swap_velocity(x: Tensor) -> Tensor:
    """Exchange channels 1 and 2 (x and y velocity / momentum) to turn a y-sweep into an x-sweep."""
    perm = [0, 2, 1, *range(3, x.shape[1])]
    return x[:, perm]


def hllc_flux(
    ql: Tensor,
    qr: Tensor,
    fl: Tensor,
    fr: Tensor,
    ustar_l: Tensor,
    ustar_r: Tensor,
    sl: Tensor,
    sr: Tensor,
    sstar: Tensor,
) -> Tensor:
    """HLLC flux (Toro, ch. 10) from the two outer states/fluxes, their star states and wave speeds.

    Speeds are ``[B, ...]``; states and fluxes ``[B, C, ...]``.
    """
    sl, sr, sstar = sl.unsqueeze(1), sr.unsqueeze(1), sstar.unsqueeze(1)
    fstar_l = fl + sl * (ustar_l - ql)
    fstar_r = fr + sr * (ustar_r - qr)
    return torch.where(sl >= 0, fl, torch.where(sstar >= 0, fstar_l, torch.where(sr > 0, fstar_r, fr)))


def rhs(q: Tensor, law: ConservationLaw, dx: float, dy: float) -> Tensor:
    """dq/dt = -(dF/dx + dG/dy) with MUSCL faces and the law's numerical flux on a periodic grid.

    The x-faces and the (velocity-swapped) y-faces go through one flux call, flattened side by side.
    """
    w = law.primitive(q)
    batch, channels, height, width = w.shape
    xl, xr = muscl_faces(w, -1)
    yl, yr = muscl_faces(swap_velocity(w), -2)
    flux = law.flux_x(
        torch.cat([xl.flatten(2), yl.flatten(2)], dim=-1), torch.cat([xr.flatten(2), yr.flatten(2)], dim=-1)
    )
    fx, gy = (f.view(batch, channels, height, width) for f in flux.split(height * width, dim=-1))
    gy = swap_velocity(gy)
    return (fx.roll(1, -1) - fx) / dx + (gy.roll(1, -2) - gy) / dy


def stable_step(q: Tensor, law: ConservationLaw, dx: float, dy: float, cfl: float) -> Tensor:
    """Per-trajectory CFL step ``[B]``: cfl / max over cells of (|u|+a)/dx + (|v|+a)/dy."""
    w = law.primitive(q)
    a = law.signal_speed(w)
    rate = ((w[:, 1].abs() + a) / dx + (w[:, 2].abs() + a) / dy).amax(dim=(-2, -1))
    return cfl / rate


def ssp_rk3(q: Tensor, dt: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """One Shu-Osher SSP-RK3 step with per-trajectory step ``dt`` of shape ``[B]``."""
    dt = dt.to(q.dtype).view(-1, *([1] * (q.dim() - 1)))
    q1 = q + dt * f(q)
    q2 = 0.75 * q + 0.25 * (q1 + dt * f(q1))
    return q / 3.0 + (2.0 / 3.0) * (q2 + dt * f(q2))


MAX_STEPS_BETWEEN_CHECKS = 64
"""Upper bound on the steps run between two host checks of progress and finiteness (one sync each)."""


def evolve(
    w0: Tensor,
    law: ConservationLaw,
    times: Sequence[float],
    cfl: float = 0.4,
    dt: float | None = None,
    max_steps: int = 1_000_000,
) -> Tensor:
    """Integrate primitive initial data ``w0 [B, C, H, W]`` on the periodic unit square.

    Returns primitive snapshots ``[B, T, C, H, W]`` at ``times`` (increasing, ``times[0] = 0``).
    Each trajectory takes its own CFL step (or the fixed ``dt``), shortened so that every snapshot
    time is hit exactly; a trajectory that has reached the snapshot time stays unchanged while the
    others finish. The host reads progress only between runs of steps (as many as the slowest
    trajectory still needs at its current step, at most ``MAX_STEPS_BETWEEN_CHECKS``), so the device
    never waits on it per step; a non-finite step found there raises FloatingPointError.
    """
    if w0.dim() != 4:
        raise ValueError(f"finite-volume state: expected [B, C, H, W], got shape {tuple(w0.shape)}")
    height, width = w0.shape[-2:]
    dx, dy = 1.0 / width, 1.0 / height
    q = law.conservative(w0)
    batch = q.shape[0]
    t = torch.zeros(batch, dtype=torch.float64, device=q.device)
    snaps = [w0]
    steps = 0
    for target in times[1:]:
        run = 1
        while True:
            bad = torch.zeros((), dtype=torch.bool, device=q.device)
            for _ in range(run):
                q, t, needed, finite = _step_towards(q, t, target, law, dx, dy, cfl, dt)
                bad = bad | ~finite
            steps += run
            unfinished, blown_up, needed = torch.stack([(t < target).sum(), bad.long(), needed]).tolist()
            if blown_up:
                raise FloatingPointError(f"finite-volume solve blew up before t={target} (non-finite state)")
            if not unfinished:
                break
            if steps > max_steps:
                raise RuntimeError(f"finite-volume solve exceeded {max_steps} steps before t={target}")
            run = min(max(needed, 1), MAX_STEPS_BETWEEN_CHECKS)
        snaps.append(law.primitive(q))
    return torch.stack(snaps, dim=1)


def _step_towards(
    q: Tensor, t: Tensor, target: float, law: ConservationLaw, dx: float, dy: float, cfl: float, dt
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SSP-RK3 step of every unfinished trajectory towards ``target``, without reading anything on the host.

    Returns the new state and times, the number of steps the slowest trajectory still needs at its
    current step size (a device scalar), and whether this step's sizes were finite.
    """
    remaining = target - t
    active = remaining > 0
    step_size = stable_step(q, law, dx, dy, cfl).to(torch.float64) if dt is None else torch.full_like(t, dt)
    n = torch.ceil(remaining / step_size).clamp(min=1)
    step = torch.where(active, remaining / n, torch.zeros_like(remaining))
    advanced = ssp_rk3(q, step, lambda s: rhs(s, law, dx, dy))
    q = torch.where(active.view(-1, *([1] * (q.dim() - 1))), advanced, q)
    t = torch.where(n <= 1, torch.full_like(t, target), t + step)
    needed = torch.where(active, n - 1, torch.zeros_like(n)).amax().long()
    return q, t, needed, torch.isfinite(step_size).all()
