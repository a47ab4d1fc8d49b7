"""PDEBench 2D HDF5 files, both layouts.

Per-field arrays `[B, T, X, Y]` (compressible NS: `density`, `Vx`, `Vy`, `pressure`; incompressible NS:
`velocity [B, T, X, Y, 2]`, `particles [B, T, X, Y, 1]`) with `t-coordinate`, `x-coordinate`,
`y-coordinate`; or one group per seed (`"0000"/data [T, X, Y, C]`, `"0000"/grid/{x, y, t}`) for 2D
diffusion-reaction and shallow water. X is PDEBench's first spatial axis; pdefm's H axis is y, so
arrays are transposed to [..., Y, X].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from data_pipelines.formats.common import (
    FormatError,
    UnnamedChannelsError,
    build,
    domain_from_centres,
    open_hdf5,
    read_array,
)

SCALAR_FIELDS = {"density": "rho", "Vx": "u", "Vy": "v", "pressure": "p"}
VECTOR_FIELDS = {"velocity": ("u", "v"), "particles": ("tracer",)}


def is_per_field_layout(f: h5py.File) -> bool:
    """PDEBench's per-field layout: a rank-4 scalar field, or a vector field with its components last.

    A Poseidon file whose one variable is `velocity [N, T, C, H, W]` (channels second) is not one.
    """
    for key in SCALAR_FIELDS:
        if isinstance(f.get(key), h5py.Dataset) and f[key].ndim == 4:
            return True
    for key, comps in VECTOR_FIELDS.items():
        ds = f.get(key)
        if isinstance(ds, h5py.Dataset) and ds.ndim == 5 and ds.shape[-1] == len(comps):
            return True
    return False


def _times(path, f: h5py.File, key: str, n_t: int) -> np.ndarray:
    """Times [T]; PDEBench sometimes stores T + 1 stamps (grid edges) or one row per sample."""
    t = np.asarray(f[key][()], dtype=np.float32)
    if t.ndim == 2 and t.shape[-1] in (n_t, n_t + 1):
        t = t[0]
    if t.ndim == 1 and t.size in (n_t, n_t + 1):
        return t[:n_t]
    raise FormatError(f"{path}: field {key!r} has shape {t.shape}, expected [{n_t}] (or [{n_t + 1}]) times")


def _per_field(path, f: h5py.File, pde: str, fields: Sequence[str] | None) -> list:
    channels, names = [], []
    for key, name in SCALAR_FIELDS.items():
        if key in f:
            channels.append(read_array(path, f[key], key, 4, "[B, T, X, Y]")[:, :, None])
            names.append(name)
    for key, comps in VECTOR_FIELDS.items():
        if key in f:
            arr = read_array(path, f[key], key, 5, f"[B, T, X, Y, {len(comps)}]")
            if arr.shape[-1] != len(comps):
                raise FormatError(
                    f"{path}: field {key!r} must have {len(comps)} components last, got shape {arr.shape}"
                )
            channels.append(np.moveaxis(arr, -1, 2))
            names += comps
    shapes = {c.shape[:2] + c.shape[3:] for c in channels}
    if len(shapes) != 1:
        raise FormatError(f"{path}: fields {names} disagree in [B, T, X, Y] shape: {sorted(shapes)}")
    u = np.concatenate(channels, axis=2).swapaxes(-1, -2)
    t_key = next((k for k in ("t-coordinate", "t") if k in f), None)
    t = _times(path, f, t_key, u.shape[1]) if t_key else None
    domain = (0.0, 1.0, 0.0, 1.0)
    if "x-coordinate" in f and "y-coordinate" in f:
        domain = domain_from_centres(f["x-coordinate"][()], f["y-coordinate"][()])
    return build(u, t, list(fields) if fields is not None else names, pde, path, domain=domain)


def _seed_groups(path, f: h5py.File, fields: Sequence[str], pde: str) -> list:
    trajectories = []
    for key in sorted(f.keys()):
        group = f[key]
        if not isinstance(group, h5py.Group) or "data" not in group:
            raise FormatError(f"{path}: group {key!r} has no 'data' [T, X, Y, C] array")
        data = read_array(path, group["data"], f"{key}/data", 4, "[T, X, Y, C]")
        u = np.moveaxis(data, -1, 1).swapaxes(-1, -2)[None]
        t = _times(path, group, "grid/t", u.shape[1]) if "grid/t" in group else None
        domain = (0.0, 1.0, 0.0, 1.0)
        if "grid/x" in group and "grid/y" in group:
            domain = domain_from_centres(group["grid/x"][()], group["grid/y"][()])
        trajectories += build(u, t, fields, pde, f"{path}:{key}", bc="neumann", domain=domain)
    return trajectories


def _default_seed_fields(path: Path, n_c: int) -> tuple[str, ...]:
    name = path.name.lower()
    if "swe" in name or "shallow" in name:
        return ("h",)[:n_c] if n_c == 1 else ()
    if "diff" in name or "react" in name:
        return ("a", "b") if n_c == 2 else ()
    return ()


def read_pdebench(path: str | Path, fields: Sequence[str] | None = None, pde: str | None = None) -> list:
    """Trajectories of a 2D PDEBench file in either layout; `fields` names seed-group channels."""
    path = Path(path)
    pde = pde or path.stem
    with open_hdf5(path) as f:
        if is_per_field_layout(f):
            return _per_field(path, f, pde, fields)
        groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
        if not groups:
            raise FormatError(
                f"{path}: no PDEBench 2D layout: expected fields {sorted({*SCALAR_FIELDS, *VECTOR_FIELDS})} "
                f"or seed groups with 'data', got {list(f.keys())}"
            )
        first = f[groups[0]].get("data")
        n_c = first.shape[-1] if first is not None and first.ndim == 4 else 0
        fields = fields or _default_seed_fields(path, n_c)
        if not fields:
            raise UnnamedChannelsError(
                f"{path}: cannot name the {n_c} channel(s) of '{groups[0]}/data'; "
                f"name them with fields=... (--fields)",
                n_c,
            )
        return _seed_groups(path, f, fields, pde)
