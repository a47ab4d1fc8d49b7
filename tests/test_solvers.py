"""PDE families: registry, contract (shapes, determinism, dtypes) and each solver against independent truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import simpson, solve_ivp
from typer.testing import CliRunner

from data_pipelines.cli import app
from data_pipelines.fields import MAX_COEFFICIENTS
from data_pipelines.solvers import get_family, list_families, resolve_families
from data_pipelines.solvers.advection import solve_advection
from data_pipelines.solvers.burgers import solve_burgers
from data_pipelines.solvers.diffusion import solve_diffusion
from data_pipelines.solvers.gray_scott import solve_gray_scott
from data_pipelines.solvers.helmholtz import solve_helmholtz
from data_pipelines.solvers.navier_stokes import solve_vorticity
from data_pipelines.solvers.poisson import solve_poisson
from data_pipelines.solvers.spectral import SpectralGrid
from data_pipelines.trajectory import Trajectory

F64 = torch.float64
MINE = [
    "ns_sines", "ns_gauss", "ns_shear_layer", "ns_pwc", "ns_kolmogorov", "advection", "diffusion",
    "burgers", "allen_cahn", "gray_scott", "nls", "poisson", "helmholtz",
]  # fmt: skip


def _grid(n=32, complex_fields=False):
    return SpectralGrid(n, "cpu", F64, complex_fields)


def _times(*ts):
    return torch.tensor(ts, dtype=F64)


def _fd_laplacian(s: torch.Tensor, n: int) -> torch.Tensor:
    """Second-order five-point periodic Laplacian, independent of the spectral solvers."""
    nb = s.roll(1, -1) + s.roll(-1, -1) + s.roll(1, -2) + s.roll(-1, -2)
    return (nb - 4 * s) * n * n


# ---------------------------------------------------------------- registry and contract


def test_registry_lists_resolves_and_rejects_unknown_names():
    assert set(MINE) <= set(list_families())
    assert [f.name for f in resolve_families("ns_gauss, poisson,ns_gauss")] == ["ns_gauss", "poisson"]
    assert [f.name for f in resolve_families("all")] == list_families()
    with pytest.raises(KeyError, match="unknown PDE family 'nope'.*ns_sines"):
        get_family("nope")
    with pytest.raises(ValueError, match="empty family selection"):
        resolve_families(" , ")


def test_families_command_prints_one_line_per_family():
    result = CliRunner().invoke(app, ["families"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(list_families())
    gs = next(line for line in lines if line.startswith("gray_scott "))
    assert "fields=a,b" in gs and "feed=[0.02, 0.05]" in gs and "T=1000" in gs
    assert "steady" in next(line for line in lines if line.startswith("poisson "))


@pytest.mark.parametrize("name", list_families())
def test_every_family_gives_finite_output_of_declared_shape(name):
    fam = get_family(name)
    batch = fam.generate(2, 16, 3, seed=0)
    n_t = 2 if fam.steady else 3
    assert batch.u.shape == (2, n_t, len(fam.fields), 16, 16) and batch.u.dtype == torch.float32
    assert torch.isfinite(batch.u).all()
    assert torch.allclose(batch.t, torch.linspace(0, fam.horizon, n_t))
    for params in batch.params:
        assert set(fam.coefficient_ranges) <= set(params)
        for k, (lo, hi) in fam.coefficient_ranges.items():
            assert lo - 1e-6 * abs(lo) <= params[k] <= hi + 1e-6 * abs(hi), (k, params[k])
        coeff = fam.normalize_coefficients(params)
        assert coeff.shape == (MAX_COEFFICIENTS,) and (coeff >= 0).all() and (coeff <= 1).all()
    for traj in batch.to_trajectories(fam):
        traj.validate(f"generated {name}")


@pytest.mark.parametrize("name", ["ns_pwc", "nls", "diffusion"])
def test_deterministic_by_seed(name):
    fam = get_family(name)
    a, b, c = (fam.generate(2, 16, 2, seed=s).u for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", ["ns_gauss", "allen_cahn", "helmholtz"])
def test_float64_matches_float32(name):
    fam = get_family(name)
    u32, u64 = fam.generate(2, 16, 3, seed=1).u, fam.generate(2, 16, 3, seed=1, dtype=F64).u
    assert u64.dtype == F64
    assert (u32.double() - u64).abs().max() < 1e-4 * u64.abs().max()


def test_batch_rows_get_their_own_coefficients():
    fam = get_family("burgers")
    full = fam.generate(3, 16, 2, seed=2, dtype=F64)
    assert full.u.shape[0] == 3 and len(full.params) == 3
    assert len({p["nu"] for p in full.params}) == 3


def test_invalid_requests_are_rejected():
    with pytest.raises(ValueError, match="resolution >= 8"):
        get_family("poisson").generate(1, 4, 2, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        get_family("poisson").generate(1, 16, 2, seed=0, dtype=torch.float16)


def test_trajectory_validate_names_the_problem():
    u = np.zeros((3, 2, 8, 8), np.float32)
    Trajectory(u, np.arange(3), ["u", "v"], "x").validate("ok")
    with pytest.raises(ValueError, match="f.h5.*rank 4"):
        Trajectory(u[0], np.arange(3), ["u", "v"], "x").validate("f.h5")
    with pytest.raises(ValueError, match=r"t must have shape \[T\] = \[3\]"):
        Trajectory(u, np.arange(4), ["u", "v"], "x").validate("f.h5")
    with pytest.raises(ValueError, match="1 field names"):
        Trajectory(u, np.arange(3), ["u"], "x").validate("f.h5")
    with pytest.raises(ValueError, match=r"unknown field name\(s\) \['vel'\]"):
        Trajectory(u, np.arange(3), ["u", "vel"], "x").validate("f.h5")
    u[2, 1, 3, 3] = np.inf
    with pytest.raises(ValueError, match="field 'v' has 1 NaN/Inf value.*time index 2"):
        Trajectory(u, np.arange(3), ["u", "v"], "x").validate("f.h5")


# ---------------------------------------------------------------- Navier-Stokes


def test_taylor_green_vortex_decays_exactly():
    g, nu = _grid(), torch.tensor([0.01, 0.002], dtype=F64)
    w0 = (4 * math.pi * torch.sin(2 * math.pi * g.x) * torch.sin(2 * math.pi * g.y)).expand(2, -1, -1)
    vel = solve_vorticity(g, w0, nu, _times(0.0, 0.5, 1.0))
    decay = torch.exp(-2 * nu[:, None] * (2 * math.pi) ** 2 * _times(0.0, 0.5, 1.0))[..., None, None]
    u = torch.sin(2 * math.pi * g.x) * torch.cos(2 * math.pi * g.y) * decay
    v = -torch.cos(2 * math.pi * g.x) * torch.sin(2 * math.pi * g.y) * decay
    assert (vel[:, :, 0] - u).abs().max() < 1e-12 and (vel[:, :, 1] - v).abs().max() < 1e-12


def test_kolmogorov_forcing_spins_up_the_exact_laminar_flow():
    """From rest, f = A sin(2pi(x+y)) gives w = A/(nu k^2) (1 - exp(-nu k^2 t)) sin(2pi(x+y)) exactly."""
    g, nu, amp = _grid(), torch.tensor([0.01], dtype=F64), 0.3
    f = amp * torch.sin(2 * math.pi * (g.x + g.y))[None]
    vel = solve_vorticity(g, torch.zeros_like(f), nu, _times(0.0, 1.0), forcing=f, dt=0.05)
    k2 = 8 * math.pi**2
    w_exact = amp / (0.01 * k2) * (1 - math.exp(-0.01 * k2)) * torch.sin(2 * math.pi * (g.x + g.y))
    u_exact = g.ifft(g.iky * g.fft(w_exact) / k2)  # psi = w / k^2 for a single wavevector
    assert (vel[0, -1, 0] - u_exact).abs().max() < 1e-8 * u_exact.abs().max()  # RK4 quadrature of f


def test_navier_stokes_energy_balance():
    """Kinetic energy obeys dE/dt = -nu <w^2>: the dealiased nonlinearity moves, never makes, energy."""
    fam = get_family("ns_gauss")
    out = fam.generate(2, 32, 41, seed=3, dtype=F64)
    g = _grid()
    u, v = out.u[:, :, 0], out.u[:, :, 1]
    w = g.ifft(g.ikx * g.fft(v) - g.iky * g.fft(u))
    energy, enstrophy = 0.5 * (u**2 + v**2).mean((-2, -1)), (w**2).mean((-2, -1))
    nu = torch.tensor([p["nu"] for p in out.params], dtype=F64)
    dissipated = nu * torch.trapezoid(enstrophy, out.t, dim=1)
    lost = energy[:, 0] - energy[:, -1]
    assert torch.allclose(lost, dissipated, rtol=2e-3), (lost, dissipated)
    assert (lost > 0.01 * energy[:, 0]).all()


# ---------------------------------------------------------------- advection, diffusion, Burgers


def test_constant_velocity_advection_translates_a_fourier_mode():
    g = _grid()
    s0 = torch.sin(2 * math.pi * (2 * g.x + g.y))[None]
    a_u, a_v = torch.full_like(s0, 0.7), torch.full_like(s0, -0.3)
    exact = torch.sin(2 * math.pi * (2 * (g.x - 0.7) + (g.y + 0.3)))
    err = [
        (solve_advection(g, s0, a_u, a_v, _times(0.0, 1.0), dt=h)[0, -1] - exact).abs().max()
        for h in (0.02, 0.01)
    ]
    assert err[1] < 1e-5 and 3.8 < math.log2(err[0] / err[1]) < 4.2, err  # measured order 4.0 (RK4)


def test_variable_advection_conserves_mass_and_l2_norm():
    out = get_family("advection").generate(2, 32, 5, seed=4, dtype=F64)
    s = out.u[:, :, 0]
    mass, l2 = s.mean((-2, -1)), (s**2).mean((-2, -1))
    assert (mass - mass[:, :1]).abs().max() < 1e-12
    assert ((l2 - l2[:, :1]) / l2[:, :1]).abs().max() < 2e-3
    assert (out.u[:, 0, 1:] == out.u[:, -1, 1:]).all()  # the velocity channels are steady


def test_constant_diffusivity_decays_a_fourier_mode_exactly():
    g = _grid()
    s0 = torch.cos(2 * math.pi * (3 * g.x - g.y))[None]
    s = solve_diffusion(g, s0, torch.full_like(s0, 0.004), _times(0.0, 1.0))
    exact = s0[0] * math.exp(-0.004 * 10 * (2 * math.pi) ** 2)
    assert (s[0, -1] - exact).abs().max() < 1e-12


def test_variable_diffusion_conserves_mass_and_dissipates_as_div_k_grad():
    """d/dt (1/2)<s^2> = -<k |grad s|^2> (energy identity), measured on generated snapshots."""
    out = get_family("diffusion").generate(2, 32, 81, seed=5, dtype=F64)
    g = _grid()
    s, kappa = out.u[:, :, 0], out.u[:, 0, 1][:, None]
    sx, sy = g.grad(g.fft(s))
    mass = s.mean((-2, -1))
    assert (mass - mass[:, :1]).abs().max() < 1e-12
    lost = 0.5 * ((s[:, 0] ** 2).mean((-2, -1)) - (s[:, -1] ** 2).mean((-2, -1)))
    rate = (kappa * (sx**2 + sy**2)).mean((-2, -1))
    dissipated = torch.from_numpy(simpson(rate.numpy(), x=out.t.numpy(), axis=1))
    assert torch.allclose(lost, dissipated, rtol=1e-3), (lost, dissipated)


def test_burgers_matches_cole_hopf_solution():
    """u = -2 nu phi_x / phi with phi = 2 + exp(-nu k^2 t) cos(k x) solves 1D viscous Burgers exactly."""
    g, nu, k = _grid(64), 0.05, 2 * math.pi
    times = _times(0.0, 0.25, 0.5)

    def exact(t):
        e = math.exp(-nu * k * k * t)
        return 2 * nu * k * e * torch.sin(k * g.x) / (2 + e * torch.cos(k * g.x))

    uv0 = torch.stack([exact(0.0), torch.zeros_like(g.x)])[None]
    out = solve_burgers(g, uv0, torch.tensor([nu], dtype=F64), times)
    for i, t in enumerate(times.tolist()):
        assert (out[0, i, 0] - exact(t)).abs().max() < 2e-6  # RK4 at CFL 1; spatially spectral
    assert out[0, :, 1].abs().max() < 1e-14


# ---------------------------------------------------------------- Allen-Cahn, Gray-Scott, NLS


def test_allen_cahn_is_fourth_order_in_time():
    """Step halving (0.5 -> 0.0625, reference 1/128): measured order 3.86-3.93 (IF-RK4)."""
    fam = get_family("allen_cahn")
    ref = fam.generate(2, 32, 2, seed=3, dtype=F64, dt=1 / 128).u[:, -1]
    errors = [
        (fam.generate(2, 32, 2, seed=3, dtype=F64, dt=h).u[:, -1] - ref).abs().max() for h in (0.5, 0.25)
    ]
    errors.append((fam.generate(2, 32, 2, seed=3, dtype=F64, dt=0.125).u[:, -1] - ref).abs().max())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.6 < p < 4.4 for p in orders), orders


def test_gray_scott_uniform_state_follows_the_reaction_ode():
    g = _grid(16)
    coeffs = {k: torch.tensor([v], dtype=F64) for k, v in {"feed": 0.04, "kill": 0.06, "Db": 2e-5}.items()}
    ab0 = torch.stack([torch.full_like(g.x, 0.6), torch.full_like(g.x, 0.3)])[None]
    out = solve_gray_scott(g, ab0, coeffs, _times(0.0, 50.0, 100.0), dt=0.25)

    def rhs(_, y):
        a, b = y
        return [-a * b * b + 0.04 * (1 - a), a * b * b - 0.1 * b]

    ref = solve_ivp(rhs, (0, 100), [0.6, 0.3], t_eval=[50, 100], rtol=1e-12, atol=1e-14).y
    assert np.allclose(out[0, 1:, :, 0, 0].numpy().T, ref, atol=1e-8)


def test_gray_scott_concentrations_stay_bounded_and_nonnegative():
    """Invariant region 0 <= a, b and a <= 1, up to spectral undershoot at the fronts (< 0.5% at 64^2)."""
    out = get_family("gray_scott").generate(2, 64, 3, seed=0)
    a, b = out.u[:, :, 0], out.u[:, :, 1]
    assert a.min() > -0.005 and a.max() < 1.005 and b.min() > -0.005 and b.max() < 1.0
    assert b[:, -1].std((-2, -1)).max() > 0.02  # a pattern formed and persisted (the check is not vacuous)


def test_nls_conserves_mass_and_energy():
    out = get_family("nls").generate(2, 32, 6, seed=1, dtype=F64)
    g = _grid(32, complex_fields=True)
    psi = torch.complex(out.u[:, :, 0], out.u[:, :, 1])
    kappa = torch.tensor([p["kappa"] for p in out.params], dtype=F64)[:, None, None, None]
    px, py = g.grad(g.fft(psi))
    mass = (psi.abs() ** 2).mean((-2, -1))
    energy = (0.5 * (px.abs() ** 2 + py.abs() ** 2) - 0.5 * kappa * psi.abs() ** 4).mean((-2, -1))
    assert ((mass - mass[:, :1]) / mass[:, :1]).abs().max() < 1e-6
    assert ((energy - energy[:, :1]) / energy[:, :1].abs()).abs().max() < 1e-5
    assert (psi[:, -1] - psi[:, 0]).abs().max() > 0.1  # it did evolve


# ---------------------------------------------------------------- steady: Poisson, Helmholtz


def test_poisson_manufactured_solution():
    g = _grid()
    exact = torch.sin(2 * math.pi * g.x) * torch.cos(4 * math.pi * g.y)
    assert (solve_poisson(g, (20 * math.pi**2 * exact)[None])[0] - exact).abs().max() < 1e-12


def test_helmholtz_manufactured_solution_with_variable_coefficient():
    g = _grid()
    exact = (torch.sin(2 * math.pi * g.x) * torch.cos(4 * math.pi * g.y) + 0.3)[None]
    c = 1 + 0.5 * torch.cos(2 * math.pi * (g.x + 2 * g.y))[None]
    omega = torch.tensor([7.0], dtype=F64)
    f = g.ifft(g.k2 * g.fft(exact)) + 49.0 * c * exact
    assert (solve_helmholtz(g, c, omega, f) - exact).abs().max() < 1e-9


@pytest.mark.parametrize("name", ["poisson", "helmholtz"])
def test_steady_solutions_satisfy_a_finite_difference_residual_at_second_order(name):
    """The 5-point residual of the generated solution shrinks 4x per grid halving (same seed, same data)."""
    fam, residuals = get_family(name), []
    for n in (32, 64):
        u = fam.generate(2, n, 1, seed=7, dtype=F64).u
        assert (u[:, 0, -1] == 0).all() and torch.equal(u[:, 0, :-1], u[:, 1, :-1])
        s, f = u[:, 1, -1], u[:, 1, -2]
        lhs = -_fd_laplacian(s, n)
        if name == "helmholtz":
            omega = torch.tensor([p["omega"] for p in fam.generate(2, n, 1, seed=7).params], dtype=F64)
            lhs = lhs + omega[:, None, None] ** 2 * u[:, 1, 0] * s
        residuals.append(((lhs - f).norm() / f.norm()).item())
    order = math.log2(residuals[0] / residuals[1])
    assert 1.7 < order < 2.3, (residuals, order)
