"""Transfer-benchmark data from an independent solver: three 2D periodic pattern-forming PDE families
solved by py-pde (not by pdefm's own solvers, and in none of its pretraining corpora).

- `cahn_hilliard`: dc/dt = lap(c^3 - c - gamma lap c), phase separation then coarsening; field `s`
  (a phase, the name pdefm's Allen-Cahn family uses).
- `fitzhugh_nagumo`: du/dt = lap u + u - u^3 - v + k, tau dv/dt = D lap v + u - v, a Turing labyrinth
  growing from noise; fields `u`, `v` as the literature names them (pdefm's velocity names: new physics
  under a familiar name).
- `brusselator`: du/dt = Du lap u + a - (b+1) u + u^2 v, dv/dt = Dv lap v + b u - u^2 v, Turing spots and
  stripes; fields `a`, `b` (pdefm's names for the two Gray-Scott species).

Every trajectory starts from small white noise around the homogeneous state, on a seeded random number
stream of its own, with fixed coefficients per family (one compiled right-hand side per family). Each
family stores 15 snapshots from t = 0; `Family.window` names the input and target snapshots where the
dynamics are learnable (from noise the horizon is ill-posed); `windowed` cuts trajectories to it.

Cached on first use as `<cache>/<settings>/<family>.npz` (u [N, T, C, H, W], t, fields: pdefm's numpy
format, readable by `pdefm finetune --data`).

    python benchmarks/transfer_data.py --trajectories 60 --resolution 32   # generate (or reuse) and summarise
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.atomic import write_bytes_atomic
from data_pipelines.formats import read_numpy
from data_pipelines.trajectory import Trajectory

DEFAULT_CACHE = Path(os.environ.get("PDEFM_TRANSFER_CACHE", Path.home() / ".cache" / "pdefm" / "transfer"))
VERSION = 1
"""Bumped whenever a family's equation, initial data or snapshot times change (a new cache folder)."""


@dataclass(frozen=True)
class Family:
    """One py-pde family: right-hand sides, periodic square side, time step at 32^2, snapshots, window."""

    name: str
    fields: tuple[str, ...]
    rhs: dict[str, str]
    length: float
    dt: float
    dt_order: int
    """Spatial order of the stiffest term: dt scales as (32 / resolution) ** dt_order on finer grids."""
    interval: float
    init: Callable[[np.random.Generator, int], list[np.ndarray]]
    window: tuple[int, int]
    snapshots: int = 15
    description: str = ""

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.snapshots, dtype=np.float32) * np.float32(self.interval)


def _noise(mean: float, amplitude: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: mean + amplitude * rng.uniform(-1.0, 1.0, (n, n))


def _cahn_hilliard_init(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Noise of amplitude 0.1 around a mean composition drawn in [-0.3, 0.3] (bicontinuous to droplets)."""
    return [_noise(rng.uniform(-0.3, 0.3), 0.1)(rng, n)]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="cahn_hilliard",
            fields=("s",),
            rhs={"s": "laplace(s**3 - s - laplace(s))"},
            length=32.0,
            dt=0.02,
            dt_order=4,
            interval=5.0,
            init=_cahn_hilliard_init,
            window=(4, 14),
            description="Cahn-Hilliard, gamma = 1 on a side of 32: spinodal decomposition, then coarsening",
        ),
        Family(
            name="fitzhugh_nagumo",
            fields=("u", "v"),
            rhs={"u": "laplace(u) + u - u**3 - v - 0.005", "v": "(18 * laplace(v) + u - v) / 0.1"},
            length=40.0,
            dt=0.002,
            dt_order=2,
            interval=0.5,
            init=lambda rng, n: [_noise(0.0, 0.5)(rng, n), _noise(0.0, 0.5)(rng, n)],
            window=(4, 14),
            description="FitzHugh-Nagumo, k = -0.005, tau = 0.1, D = 18 on a side of 40: a Turing labyrinth",
        ),
        Family(
            name="brusselator",
            fields=("a", "b"),
            rhs={"a": "4 * laplace(a) + 3 - 6.5 * a + a**2 * b", "b": "32 * laplace(b) + 5.5 * a - a**2 * b"},
            length=48.0,
            dt=0.01,
            dt_order=2,
            interval=0.6,
            init=lambda rng, n: [_noise(3.0, 0.1)(rng, n), _noise(5.5 / 3.0, 0.1)(rng, n)],
            window=(4, 14),
            description="Brusselator, a = 3, b = 5.5, Du = 4, Dv = 32 on a side of 48: Turing spots and stripes",
        ),
    )
}


def settings_key(trajectories: int, resolution: int, seed: int) -> str:
    """The cache folder name of one data set: what made it, and a short hash of the family definitions."""
    spec = {n: (f.rhs, f.length, f.dt, f.interval, f.snapshots) for n, f in FAMILIES.items()}
    digest = hashlib.sha1(json.dumps([spec, VERSION], sort_keys=True).encode()).hexdigest()[:8]
    return f"n{trajectories}-r{resolution}-s{seed}-{digest}"


def solve(
    family: Family, trajectories: int, resolution: int, seed: int, backend: str = "numba"
) -> np.ndarray:
    """`u[N, T, C, H, W]` float32: each trajectory from its own seeded noise, solved by py-pde (explicit Euler;
    `backend` "numba" compiles the right-hand side once per family, "numpy" skips compiling for tiny runs)."""
    import pde  # py-pde: the independent solver (the `bench` extra)

    grid = pde.CartesianGrid([[0.0, family.length]] * 2, [resolution] * 2, periodic=True)
    equation = pde.PDE(family.rhs)
    dt = family.dt * (32 / resolution) ** family.dt_order if resolution > 32 else family.dt
    t_end = family.interval * (family.snapshots - 1)
    family_id = list(FAMILIES).index(family.name)
    out = np.empty((trajectories, family.snapshots, len(family.fields), resolution, resolution), np.float32)
    for k in range(trajectories):
        rng = np.random.default_rng([seed, family_id, k])
        state = pde.FieldCollection(
            [
                pde.ScalarField(grid, a, label=f)
                for a, f in zip(family.init(rng, resolution), family.fields, strict=True)
            ]
        )
        storage = pde.MemoryStorage()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # py-pde's notices about its solver names
            equation.solve(
                state,
                t_range=t_end,
                dt=dt,
                solver="euler",
                backend=backend,
                tracker=[storage.tracker(family.interval)],
            )
        data = np.asarray(storage.data, dtype=np.float32)
        if data.shape[0] != family.snapshots or not np.isfinite(data).all():
            raise RuntimeError(
                f"{family.name}: trajectory {k} gave {data.shape[0]} snapshots (expected {family.snapshots}) "
                f"or non-finite values; the time step {dt} is too large for resolution {resolution}"
            )
        out[k] = data
    return out


def generate(
    families: list[str] | None = None,
    *,
    trajectories: int = 60,
    resolution: int = 32,
    seed: int = 0,
    cache: str | Path = DEFAULT_CACHE,
    backend: str = "numba",
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """The `.npz` file of each family (generated on first use, then reused); {family: path}."""
    names = list(FAMILIES) if not families else families
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"transfer data: unknown families {unknown}; known: {list(FAMILIES)}")
    folder = Path(cache).expanduser() / settings_key(trajectories, resolution, seed)
    paths = {}
    for name in names:
        path = folder / f"{name}.npz"
        if not path.is_file():
            family = FAMILIES[name]
            start = time.perf_counter()
            u = solve(family, trajectories, resolution, seed, backend)
            buffer = io.BytesIO()
            np.savez(buffer, u=u, t=family.times, fields=np.array(family.fields))
            write_bytes_atomic(path, buffer.getvalue())
            log(
                f"{name}: {trajectories} trajectories at {resolution}^2 in {time.perf_counter() - start:.0f} s -> {path}"
            )
        paths[name] = path
    return paths


def load(path: str | Path) -> list[Trajectory]:
    """The trajectories of one cached family file (its name is the family id)."""
    path = Path(path)
    return read_numpy(path, pde=path.stem)


def windowed(trajs: list[Trajectory], window: tuple[int, int]) -> list[Trajectory]:
    """The trajectories cut to snapshots `window[0] .. window[1]` (inclusive), times shifted to start at 0."""
    i, j = window
    return [
        Trajectory(t.u[i : j + 1], t.t[i : j + 1] - t.t[i], t.fields, t.pde, dict(t.params), t.bc, t.domain)
        for t in trajs
    ]


def persistence_error(trajs: list[Trajectory], input_index: int, target_index: int) -> float:
    """Median over trajectories of relative L1 between the input snapshot and the target (all channels)."""
    errs = [
        np.abs(t.u[target_index] - t.u[input_index]).sum() / np.abs(t.u[target_index]).sum() for t in trajs
    ]
    return float(np.median(errs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--trajectories", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    paths = generate(
        args.families.split(","),
        trajectories=args.trajectories,
        resolution=args.resolution,
        seed=args.seed,
        cache=args.cache,
    )
    for name, path in paths.items():
        family, trajs = FAMILIES[name], load(path)
        i, j = family.window
        print(
            f"{name}: {len(trajs)} x {list(trajs[0].u.shape)} fields {trajs[0].fields}; persistence "
            f"(median rel. L1) window {i}->{j}: {persistence_error(trajs, i, j):.3f}, "
            f"from the noise 0->{j}: {persistence_error(trajs, 0, j):.3f}"
        )


if __name__ == "__main__":
    main()
