"""The PDE family contract: documented coefficient/initial-data distributions and a batched torch solve.

A family samples B trajectories per call (CPU or CUDA, float32 or float64). All randomness is drawn
from a CPU ``torch.Generator`` seeded by ``seed``, so a seed gives the same data on every device.
Steady families return T = 2 snapshots at t = (0, horizon): the data with the solution channels zero,
then the data with the solution, so the 0 -> 1 pair is the solution operator (Poseidon's f -> u).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from data_pipelines.fields import MAX_COEFFICIENTS
from data_pipelines.trajectory import Trajectory


@dataclass
class SolverBatch:
    """B trajectories of one family: ``u[B, T, C, H, W]``, times ``t[T]``, one coefficient dict per row."""

    u: torch.Tensor
    t: torch.Tensor
    params: list[dict[str, float]]

    def to_trajectories(self, family: PDEFamily) -> list[Trajectory]:
        """Split into float32 ``Trajectory`` rows carrying the family's name, fields, bc and domain."""
        return [
            Trajectory(
                u=self.u[b],
                t=self.t,
                fields=list(family.fields),
                pde=family.name,
                params=dict(self.params[b]),
                bc=family.bc,
                domain=family.domain,
            )
            for b in range(self.u.shape[0])
        ]


class Sampler:
    """Seeded random draws on the CPU, returned on the solve's device and dtype."""

    def __init__(self, seed: int, device: torch.device | str, dtype: torch.dtype):
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.device, self.dtype = torch.device(device), dtype

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def uniform(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        return self._out(lo + (hi - lo) * torch.rand(shape, generator=self.generator, dtype=torch.float64))

    def log_uniform(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        return self.uniform(math.log(lo), math.log(hi), *shape).exp()

    def normal(self, *shape: int) -> torch.Tensor:
        return self._out(torch.randn(shape, generator=self.generator, dtype=torch.float64))

    def integers(self, lo: int, hi: int, *shape: int) -> torch.Tensor:
        """Integers in [lo, hi] inclusive, as int64 on the solve's device."""
        return torch.randint(lo, hi + 1, shape, generator=self.generator).to(self.device)


@dataclass
class SolveRequest:
    """What a family's ``solve`` gets: sizes, output times, the seeded sampler and an optional fixed step."""

    batch: int
    resolution: int
    times: torch.Tensor
    rng: Sampler
    device: torch.device
    dtype: torch.dtype
    dt: float | None = None


class PDEFamily(ABC):
    """A registered PDE family; subclasses set the class attributes and implement ``solve``.

    ``coefficient_ranges`` lists the sampled scalar coefficients (at most ``MAX_COEFFICIENTS``) in the
    order used for operator conditioning; ``log_coefficients`` names those drawn log-uniformly (the rest
    are uniform). ``description`` documents the equation and every sampling distribution.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    coefficient_ranges: ClassVar[dict[str, tuple[float, float]]]
    log_coefficients: ClassVar[tuple[str, ...]] = ()
    horizon: ClassVar[float]
    steady: ClassVar[bool] = False
    bc: ClassVar[str] = "periodic"
    domain: ClassVar[tuple[float, float, float, float]] = (0.0, 1.0, 0.0, 1.0)
    description: ClassVar[str]

    @abstractmethod
    def solve(self, req: SolveRequest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``u[B, T, C, H, W]`` at ``req.times`` and the sampled parameters (name -> [B]): every
        coefficient of ``coefficient_ranges`` plus, optionally, further scalar descriptors of the data."""

    def sample_coefficients(self, rng: Sampler, batch: int) -> dict[str, torch.Tensor]:
        """Draw every coefficient of ``coefficient_ranges`` for ``batch`` trajectories, in registry order."""
        draw = {True: rng.log_uniform, False: rng.uniform}
        return {
            k: draw[k in self.log_coefficients](lo, hi, batch)
            for k, (lo, hi) in self.coefficient_ranges.items()
        }

    def snapshot_times(self, snapshots: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Uniform times over [0, horizon]; steady families always give (0, horizon)."""
        n = 2 if self.steady else snapshots
        return torch.linspace(0.0, float(self.horizon), n, device=device, dtype=dtype)

    def generate(
        self,
        batch: int,
        resolution: int,
        snapshots: int,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        dt: float | None = None,
    ) -> SolverBatch:
        """Sample and solve ``batch`` trajectories on a ``resolution``^2 grid at ``snapshots`` uniform times.

        Deterministic by ``seed``. ``dt`` forces the internal time step (rounded down to divide every
        snapshot interval) instead of the family's stability-limited choice, e.g. for convergence studies.
        """
        if batch < 1 or resolution < 8 or snapshots < 1:
            raise ValueError(
                f"{self.name}: need batch >= 1, resolution >= 8, snapshots >= 1; "
                f"got batch={batch}, resolution={resolution}, snapshots={snapshots}"
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{self.name}: dtype must be torch.float32 or torch.float64, got {dtype}")
        device = torch.device(device)
        times = self.snapshot_times(snapshots, device, torch.float64)
        req = SolveRequest(batch, resolution, times, Sampler(seed, device, dtype), device, dtype, dt)
        u, coeffs = self.solve(req)
        expected = (batch, len(times), len(self.fields), resolution, resolution)
        if tuple(u.shape) != expected:
            raise RuntimeError(f"{self.name}: solver returned shape {tuple(u.shape)}, expected {expected}")
        names = list(coeffs)  # read back in one transfer, not one per value
        rows = (
            torch.stack([coeffs[k].to(torch.float64) for k in names], 1).tolist() if names else [[]] * batch
        )
        params = [dict(zip(names, row, strict=True)) for row in rows]
        return SolverBatch(u=u.to(dtype), t=times.to(dtype), params=params)

    def normalize_coefficients(self, params: dict[str, float]) -> torch.Tensor:
        """Coefficients in registry order scaled to [0, 1] by their ranges, zero padded to MAX_COEFFICIENTS."""
        out = torch.zeros(MAX_COEFFICIENTS, dtype=torch.float32)
        for i, (k, (lo, hi)) in enumerate(self.coefficient_ranges.items()):
            if k not in params:
                raise ValueError(f"{self.name}: coefficient {k!r} missing from params {sorted(params)}")
            if k in self.log_coefficients:
                lo, hi, val = math.log(lo), math.log(hi), math.log(params[k])
            else:
                val = params[k]
            out[i] = 0.0 if hi == lo else min(max((val - lo) / (hi - lo), 0.0), 1.0)
        return out
