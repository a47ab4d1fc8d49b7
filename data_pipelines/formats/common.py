"""Shared pieces of the file readers: opening HDF5 with clear errors and building Trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from data_pipelines.fields import check_fields
from data_pipelines.trajectory import Trajectory


class FormatError(ValueError):
    """A user file that does not match its format; the message names the file, the field and the shapes."""


@contextmanager
def open_hdf5(path: str | Path):
    """h5py.File opened read-only; a truncated or corrupt file raises FormatError naming it."""
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read as HDF5/netCDF4, truncated or corrupt ({exc})") from exc
    try:
        yield f
    finally:
        f.close()


def read_array(path, dataset: h5py.Dataset, name: str, rank: int, layout: str) -> np.ndarray:
    """The whole dataset as float32 after checking its rank; a corrupt chunk raises naming the field."""
    if dataset.ndim != rank:
        raise FormatError(f"{path}: field {name!r} must have rank {rank} {layout}, got shape {dataset.shape}")
    try:
        return np.asarray(dataset[()], dtype=np.float32)
    except (OSError, RuntimeError) as exc:
        raise FormatError(f"{path}: field {name!r} could not be read, the file is corrupt ({exc})") from exc


def build(
    u: np.ndarray,
    t: np.ndarray | None,
    fields: Sequence[str],
    pde: str,
    path,
    bc: str = "periodic",
    domain: Sequence[float] = (0.0, 1.0, 0.0, 1.0),
    params: dict | None = None,
) -> list[Trajectory]:
    """Trajectories from `u[N, T, C, H, W]` (float32); times default to a uniform unit horizon."""
    if u.ndim != 5:
        raise FormatError(f"{path}: data must be [N, T, C, H, W], got shape {u.shape}")
    n, n_t, n_c = u.shape[:3]
    check_fields(list(fields), str(path))
    if len(fields) != n_c:
        raise FormatError(
            f"{path}: {len(fields)} field names {list(fields)} for C = {n_c} channels in {u.shape}"
        )
    if n == 0:
        raise FormatError(f"{path}: empty selection, no trajectory in data of shape {u.shape}")
    t = np.linspace(0.0, 1.0, n_t, dtype=np.float32) if t is None else np.asarray(t, dtype=np.float32)
    if t.shape != (n_t,):
        raise FormatError(f"{path}: times must have shape [{n_t}] to match the data, got {t.shape}")
    return [
        Trajectory(
            u=u[k], t=t, fields=list(fields), pde=pde, params=dict(params or {}), bc=bc, domain=tuple(domain)
        )
        for k in range(n)
    ]


def domain_from_centres(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of a uniform cell-centred grid given its centre coordinates."""
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) if len(y) > 1 else 1.0
    return (float(x[0]) - dx / 2, float(x[-1]) + dx / 2, float(y[0]) - dy / 2, float(y[-1]) + dy / 2)
