"""The Well HDF5 files: `t0_fields/<name> [n_traj, T, X, Y]`, `t1_fields/<name> [n_traj, T, X, Y, 2]`,
`dimensions/{time, x, y}`, `boundary_conditions/<name>` with a `bc_type` attribute.

Field names are mapped onto pdefm's vocabulary (`density` -> rho, `velocity` -> u, v, ...); pass
`field_map` for others. Fields without a time axis (`time_varying` false) are constant inputs of
another shape and are skipped; t2 (tensor) fields need a `field_map` entry per component.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from data_pipelines.formats.common import FormatError, build, domain_from_centres, open_hdf5, read_array

ALIASES = {
    "density": "rho",
    "pressure": "p",
    "energy": "E",
    "velocity_x": "u",
    "velocity_y": "v",
    "tracer": "tracer",
    "concentration": "s",
    "temperature": "s",
    "buoyancy": "s",
    "vorticity": "w",
    "height": "h",
}


def _fields(
    path, f: h5py.File, group: str, components: tuple[str, ...], field_map: dict, lenient: bool
) -> tuple[list, list]:
    arrays, names = [], []
    if group not in f:
        return arrays, names
    for key, ds in f[group].items():
        if not ds.attrs.get("time_varying", True):
            continue
        rank = 4 + (1 if components else 0)
        layout = "[n_traj, T, X, Y" + (f", {len(components)}]" if components else "]")
        arr = read_array(path, ds, f"{group}/{key}", rank, layout)
        comps = [f"{key}{c}" for c in components] or [key]
        if components:
            if arr.shape[-1] != len(components):
                raise FormatError(f"{path}: field '{group}/{key}' must be {layout}, got shape {arr.shape}")
            arr = np.moveaxis(arr, -1, 2)
        else:
            arr = arr[:, :, None]
        for c, comp in enumerate(comps):
            name = field_map.get(comp) or ALIASES.get(comp)
            if name is None and not lenient:
                raise FormatError(
                    f"{path}: unknown field name {comp!r} in '{group}'; known: {sorted(ALIASES)} "
                    f"(map it with field_map={{'{comp}': '<pdefm field>'}})"
                )
            arrays.append(arr[:, :, c : c + 1])
            names.append(name)
    return arrays, names


def read_well(
    path: str | Path,
    field_map: dict[str, str] | None = None,
    pde: str | None = None,
    fields: Sequence[str] | None = None,
) -> list:
    """Trajectories of a The Well 2D file (x, y transposed to pdefm's [.., y, x] layout).

    `fields` names the flattened components (t0 fields, then t1 components) in file order instead.
    """
    path = Path(path)
    field_map = dict(field_map or {})
    with open_hdf5(path) as f:
        if int(f.attrs.get("n_spatial_dims", 2)) != 2:
            raise FormatError(
                f"{path}: attribute 'n_spatial_dims' must be 2, got {f.attrs['n_spatial_dims']}"
            )
        if "t0_fields" not in f and "t1_fields" not in f:
            raise FormatError(
                f"{path}: not a The Well file, no 't0_fields'/'t1_fields' groups in {list(f.keys())}"
            )
        lenient = fields is not None
        arrays, names = _fields(path, f, "t0_fields", (), field_map, lenient)
        more, more_names = _fields(path, f, "t1_fields", ("_x", "_y"), field_map, lenient)
        arrays, names = arrays + more, names + more_names
        if not arrays:
            raise FormatError(f"{path}: empty selection, no time-varying field in t0_fields/t1_fields")
        shapes = {a.shape[:2] + a.shape[3:] for a in arrays}
        if len(shapes) != 1:
            raise FormatError(f"{path}: fields {names} disagree in [n_traj, T, X, Y] shape: {sorted(shapes)}")
        u = np.concatenate(arrays, axis=2).swapaxes(-1, -2)
        names = list(fields) if fields is not None else names
        t = None
        if "dimensions/time" in f:
            t = np.asarray(f["dimensions/time"][()], dtype=np.float32)
            t = t[0] if t.ndim == 2 else t
        domain = (0.0, 1.0, 0.0, 1.0)
        if "dimensions/x" in f and "dimensions/y" in f:
            domain = domain_from_centres(f["dimensions/x"][()], f["dimensions/y"][()])
        bcs = sorted(
            {str(g.attrs.get("bc_type", "")).lower() for g in f.get("boundary_conditions", {}).values()}
            - {""}
        )
        pde = pde or str(f.attrs.get("dataset_name", path.stem))
        params = {}
        if "scalars" in f:
            params = {k: float(np.asarray(v[()]).ravel()[0]) for k, v in f["scalars"].items()}
    return build(u, t, names, pde, path, bc="+".join(bcs) or "periodic", domain=domain, params=params)
