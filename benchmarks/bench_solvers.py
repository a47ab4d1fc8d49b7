"""Solver throughput: trajectories per second per family, and pdefm vs py-pde at matched accuracy.

Part 1 times ``family.generate`` (batched) for every registered family. Part 2 solves Navier-Stokes
(vorticity), variable-coefficient diffusion and Allen-Cahn on the same grid with pdefm's batched
pseudo-spectral solvers and with py-pde (finite differences, adaptive Runge-Kutta), measures both
against a fine reference (pdefm's solver at twice the resolution with an 8x smaller step, resampled
spectrally) and prints the throughput ratio. Not a test; needs the ``bench`` extra (py-pde).

    .venv/bin/python benchmarks/bench_solvers.py [--resolution 64] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from data_pipelines.solvers import get_family, list_families
from data_pipelines.solvers.allen_cahn import solve_allen_cahn
from data_pipelines.solvers.diffusion import solve_diffusion
from data_pipelines.solvers.navier_stokes import solve_vorticity
from data_pipelines.solvers.spectral import SpectralGrid

F64 = torch.float64


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}, load avg {os.getloadavg()[0]:.1f}"
    )


def family_throughput(args) -> None:
    print(f"\n== trajectories/s per family: batch {args.batch}, {args.resolution}^2, {args.snapshots} snapshots, "
          f"{args.device}, float32")  # fmt: skip
    for name in list_families():
        fam = get_family(name)
        fam.generate(1, 16, 2, seed=0, device=args.device)  # warm-up
        start = time.perf_counter()
        fam.generate(args.batch, args.resolution, args.snapshots, seed=1, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        print(f"{name:<16} {args.batch / elapsed:9.2f} traj/s   ({elapsed:.2f} s per batch)")


def resample(u: torch.Tensor, n_out: int) -> torch.Tensor:
    """Exact Fourier interpolation of cell-centred periodic samples [..., n, n] onto the n_out cell centres."""
    n = u.shape[-1]
    k_in = torch.fft.fftfreq(n, 1.0 / n, dtype=F64)
    shift = torch.exp(
        -1j * math.pi * k_in * (1.0 / n - 1.0 / n_out)
    )  # move the sample offset 0.5/n -> 0.5/n_out
    u_hat = torch.fft.fft2(u) * shift[:, None] * shift[None, :]
    keep = torch.cat([torch.arange(n_out // 2), torch.arange(n - n_out // 2, n)])
    return torch.fft.ifft2(u_hat[..., keep, :][..., keep] * (n_out / n) ** 2).real


def initial_field(grid: SpectralGrid) -> torch.Tensor:
    """A smooth analytic field of a few modes, the same function on every grid."""
    x, y = grid.x, grid.y
    return (
        torch.sin(2 * math.pi * x) * torch.cos(2 * math.pi * y)
        + 0.5 * torch.sin(2 * math.pi * (2 * x + y) + 0.3)
        + 0.3 * torch.cos(2 * math.pi * (x - 3 * y) + 1.1)
    )


def kappa_field(grid: SpectralGrid, kappa0: float) -> torch.Tensor:
    return kappa0 * torch.exp(0.5 * torch.sin(2 * math.pi * grid.x) * torch.cos(2 * math.pi * grid.y))


def _ns_vorticity(g, s0, c, t, dt):
    vel = solve_vorticity(g, 4 * s0, c, t, dt=dt)[:, -1]
    return g.ifft(g.ikx * g.fft(vel[:, 1]) - g.iky * g.fft(vel[:, 0]))


PROBLEMS = {
    # name: (horizon, coefficient, reference dt, pdefm solve(grid, s0[B, n, n], coeff[B], times, dt) -> final[B, n, n])
    "navier_stokes": (1.0, 1e-3, 1e-3, _ns_vorticity),
    "diffusion": (1.0, 5e-3, 2.5e-4, lambda g, s0, c, t, dt: solve_diffusion(g, s0, kappa_field(g, 1.0) * c[:, None, None], t, dt)[:, -1]),
    "allen_cahn": (4.0, 0.05, 1e-3, lambda g, s0, c, t, dt: solve_allen_cahn(g, 0.5 * s0, c, t, dt)[:, -1]),
}  # fmt: skip


def pdefm_final(name: str, n: int, batch: int, dt=None) -> torch.Tensor:
    """Final state of ``batch`` copies of the benchmark problem at the solver's default (or given) step."""
    horizon, coeff, _, solve = PROBLEMS[name]
    grid = SpectralGrid(n, "cpu", F64)
    s0 = initial_field(grid).expand(batch, -1, -1)
    return solve(
        grid, s0, torch.full((batch,), coeff, dtype=F64), torch.tensor([0.0, horizon], dtype=F64), dt
    )


def pypde_final(name: str, n: int, tolerance: float, backend: str) -> np.ndarray:
    import pde

    horizon, coeff, _, _ = PROBLEMS[name]
    grid = pde.CartesianGrid([[0, 1], [0, 1]], [n, n], periodic=True)
    sgrid = SpectralGrid(n, "cpu", F64)
    s0 = initial_field(sgrid).numpy().T  # py-pde indexes [x, y]
    if name == "navier_stokes":
        eq = _pypde_vorticity(pde, coeff)
        state = pde.ScalarField(grid, 4 * s0)
    elif name == "diffusion":
        kappa = pde.ScalarField(grid, kappa_field(sgrid, coeff).numpy().T)
        eq = pde.PDE({"s": "divergence(k * gradient(s))"}, consts={"k": kappa})
        state = pde.ScalarField(grid, s0)
    else:
        eq = pde.PDE({"s": f"{coeff**2} * laplace(s) + s - s**3"})
        state = pde.ScalarField(grid, 0.5 * s0)
    solver = pde.RungeKuttaSolver(eq, adaptive=True, tolerance=tolerance, backend=backend)
    result = pde.Controller(solver, t_range=horizon, tracker=None).run(state, dt=1e-3)
    return result.data.T


def _pypde_vorticity(pde, nu: float):
    class Vorticity(pde.PDEBase):
        """w_t = nu Laplace(w) - u . grad w with Laplace(psi) = -w, (u, v) = (psi_y, -psi_x)."""

        def evolution_rate(self, state, t=0):
            psi = pde.solve_poisson_equation(-state, bc="periodic")
            grad_psi, grad_w = psi.gradient(bc="periodic").data, state.gradient(bc="periodic").data
            advection = grad_psi[1] * grad_w[0] - grad_psi[0] * grad_w[1]
            return nu * state.laplace(bc="periodic") - pde.ScalarField(state.grid, advection)

    return Vorticity()


def versus_pypde(args) -> None:
    n, batch = args.resolution, args.batch
    print(f"\n== pdefm vs py-pde on {n}^2 (py-pde: RungeKuttaSolver adaptive, tolerance {args.tolerance}, "
          f"backend {args.pypde_backend}; pdefm: batch {batch}, float64, CPU)")  # fmt: skip
    for name in PROBLEMS:
        ref = resample(pdefm_final(name, 2 * n, 1, dt=PROBLEMS[name][2]), n)[0]
        scale = float(ref.abs().max())
        pdefm_final(name, n, 2)  # warm-up
        start = time.perf_counter()
        ours = pdefm_final(name, n, batch)
        t_ours = (time.perf_counter() - start) / batch
        err_ours = float((ours[0] - ref).abs().max()) / scale
        pypde_final(name, 16, args.tolerance, args.pypde_backend)  # warm-up (numba compilation)
        start = time.perf_counter()
        theirs = pypde_final(name, n, args.tolerance, args.pypde_backend)
        t_theirs = time.perf_counter() - start
        err_theirs = float(np.abs(theirs - ref.numpy()).max()) / scale
        print(
            f"{name:<14} pdefm {1 / t_ours:8.2f} traj/s (rel. max error {err_ours:.1e})   "
            f"py-pde {1 / t_theirs:8.3f} traj/s (error {err_theirs:.1e})   "
            f"ratio {t_theirs / t_ours:7.1f}x   {'matched' if err_ours <= err_theirs else 'NOT matched'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--snapshots", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--pypde-backend", default="numpy", choices=["numba", "numpy"])
    parser.add_argument("--skip-families", action="store_true")
    parser.add_argument("--skip-pypde", action="store_true")
    args = parser.parse_args()
    print("machine:", machine())
    if not args.skip_families:
        family_throughput(args)
    if not args.skip_pypde:
        versus_pypde(args)


if __name__ == "__main__":
    main()
