"""Per-field mean/std statistics and (de)normalisation.

Statistics are keyed by field name (not channel index), so one table serves every family that shares a
field, as Poseidon normalises all its pretraining sets with one global [rho, u, v, p] table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.), in float64."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return
        n_b, mean_b = x.size, float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n
        self.minimum = min(self.minimum, float(x.min()))
        self.maximum = max(self.maximum, float(x.max()))

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.minimum,
            "max": self.maximum,
            "count": self.count,
        }


@dataclass
class FieldStatistics:
    """Accumulates per-field moments over trajectories (`u[T, C, H, W]` with `fields` naming C)."""

    moments: dict[str, RunningMoments] = field(default_factory=dict)

    def update(self, u: np.ndarray, fields: Sequence[str]) -> None:
        if u.shape[1] != len(fields):
            raise ValueError(f"u has {u.shape[1]} channels but {len(fields)} field names {list(fields)}")
        for c, name in enumerate(fields):
            self.moments.setdefault(name, RunningMoments()).update(u[:, c])

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: m.as_dict() for name, m in sorted(self.moments.items())}


class Normalizer:
    """z = (x - mean[field]) / std[field]; fields without statistics pass through unchanged.

    A constant field (std below `min_std`, e.g. unit density of incompressible flow) gets std 1 so that it
    is shifted, never divided by zero.
    """

    def __init__(self, stats: dict[str, dict[str, float]], min_std: float = 1e-8):
        self.mean = {k: float(v["mean"]) for k, v in stats.items()}
        self.std = {k: (float(v["std"]) if float(v["std"]) > min_std else 1.0) for k, v in stats.items()}

    @classmethod
    def from_trajectories(cls, trajectories: Iterable) -> Normalizer:
        acc = FieldStatistics()
        for traj in trajectories:
            acc.update(np.asarray(traj.u), traj.fields)
        return cls(acc.as_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> Normalizer:
        """Reads a corpus `stats.json` (its `fields` table) or a plain {field: {mean, std}} table."""
        data = json.loads(Path(path).read_text())
        return cls(data.get("fields", data))

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": self.mean[k], "std": self.std[k]} for k in sorted(self.mean)}

    def _affine(self, fields: Sequence[str], like) -> tuple:
        mean = [self.mean.get(f, 0.0) for f in fields]
        std = [self.std.get(f, 1.0) for f in fields]
        if isinstance(like, torch.Tensor):
            mean = torch.tensor(mean, dtype=like.dtype, device=like.device)
            std = torch.tensor(std, dtype=like.dtype, device=like.device)
        else:
            mean, std = np.asarray(mean, dtype=like.dtype), np.asarray(std, dtype=like.dtype)
        return mean, std

    def _check(self, x, fields: Sequence[str], channel_dim: int) -> int:
        dim = channel_dim % x.ndim
        if x.shape[dim] != len(fields):
            raise ValueError(
                f"normalisation: channel dim {channel_dim} has {x.shape[dim]} entries, expected {len(fields)} "
                f"for fields {list(fields)}"
            )
        return dim

    def normalize(self, x, fields: Sequence[str], channel_dim: int = -3):
        """Normalises an array or tensor whose `channel_dim` axis lists `fields` ([..., C, H, W] by default)."""
        dim = self._check(x, fields, channel_dim)
        mean, std = self._affine(fields, x)
        shape = [1] * x.ndim
        shape[dim] = len(fields)
        return (x - mean.reshape(shape)) / std.reshape(shape)

    def denormalize(self, x, fields: Sequence[str], channel_dim: int = -3):
        dim = self._check(x, fields, channel_dim)
        mean, std = self._affine(fields, x)
        shape = [1] * x.ndim
        shape[dim] = len(fields)
        return x * std.reshape(shape) + mean.reshape(shape)
