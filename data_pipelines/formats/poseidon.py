"""Poseidon PDEgym files: netCDF4/HDF5 with one array [N, T, C, H, W] (`velocity`, `data`, `solution`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py

from data_pipelines.fields import POSEIDON_CHANNELS
from data_pipelines.formats.common import FormatError, build, open_hdf5, read_array

KNOWN_VARIABLES = ("solution", "data", "velocity", "u")
# Default channel names by channel count, as the PDEgym sets lay them out (CE sets carry energy last).
DEFAULT_FIELDS = {2: ("u", "v"), 3: ("u", "v", "tracer"), 4: POSEIDON_CHANNELS, 5: (*POSEIDON_CHANNELS, "E")}


def _detect(path, f: h5py.File) -> str:
    found = [k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim == 5]
    for name in KNOWN_VARIABLES:
        if name in found:
            return name
    if len(found) == 1:
        return found[0]
    raise FormatError(
        f"{path}: cannot detect the data variable; rank-5 [N, T, C, H, W] variables: {found or 'none'} "
        f"(datasets in the file: {list(f.keys())}); pass variable=..."
    )


def read_poseidon(
    path: str | Path,
    variable: str | None = None,
    fields: Sequence[str] | None = None,
    pde: str | None = None,
) -> list:
    """Trajectories of a PDEgym file on the unit square over a unit horizon."""
    with open_hdf5(path) as f:
        variable = variable or _detect(path, f)
        if variable not in f:
            raise FormatError(f"{path}: variable {variable!r} not found; the file has {list(f.keys())}")
        ds = f[variable]
        if ds.ndim != 5:
            raise FormatError(
                f"{path}: field {variable!r} must have rank 5 [N, T, C, H, W], got shape {ds.shape}"
            )
        if fields is None:
            if ds.shape[2] not in DEFAULT_FIELDS:
                raise FormatError(
                    f"{path}: {ds.shape[2]} channels in {variable!r}; pass fields=... to name them"
                )
            fields = DEFAULT_FIELDS[ds.shape[2]]
        u = read_array(path, ds, variable, 5, "[N, T, C, H, W]")
    return build(u, None, fields, pde or Path(path).stem, path)
