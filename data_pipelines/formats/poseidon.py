"""Poseidon PDEgym files: netCDF4/HDF5 with one array [N, T, C, H, W] (`velocity`, `data`, `solution`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py

from data_pipelines.fields import POSEIDON_CHANNELS
from data_pipelines.formats.common import (
    FormatError,
    UnnamedChannelsError,
    build,
    open_hdf5,
    read_array,
    split_complex_channels,
)

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
    split_complex: bool = False,
) -> list:
    """Trajectories of a PDEgym file on the unit square over a unit horizon.

    `fields` names the C channels (needed when C has no PDEgym default); with `split_complex` a complex
    array becomes 2C real channels (each channel's real then imaginary part).
    """
    with open_hdf5(path) as f:
        variable = variable or _detect(path, f)
        if variable not in f:
            raise FormatError(f"{path}: variable {variable!r} not found; the file has {list(f.keys())}")
        ds = f[variable]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 5:
            shape = getattr(ds, "shape", "a group")
            raise FormatError(
                f"{path}: field {variable!r} must have rank 5 [N, T, C, H, W], got shape {shape}"
            )
        u = read_array(path, ds, variable, 5, "[N, T, C, H, W]", split_complex)
    if u.dtype.kind == "c":
        u, fields = split_complex_channels(u, fields, path)
    elif fields is None:
        if u.shape[2] not in DEFAULT_FIELDS:
            raise UnnamedChannelsError(
                f"{path}: no field names for the {u.shape[2]} channel(s) of {variable!r}; "
                f"name them with fields=... (--fields)",
                u.shape[2],
            )
        fields = DEFAULT_FIELDS[u.shape[2]]
    return build(u, None, fields, pde or Path(path).stem, path)
