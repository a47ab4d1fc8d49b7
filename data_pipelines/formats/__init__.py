"""Readers for the files users already have -> `list[Trajectory]`; `read_any` dispatches by extension
and content (Poseidon netCDF/HDF5, PDEBench 2D HDF5, The Well HDF5, numpy)."""

from __future__ import annotations

from pathlib import Path

from data_pipelines.formats.common import FormatError, open_hdf5
from data_pipelines.formats.numpy_files import read_numpy
from data_pipelines.formats.pdebench import SCALAR_FIELDS, VECTOR_FIELDS, read_pdebench
from data_pipelines.formats.poseidon import read_poseidon
from data_pipelines.formats.well import read_well

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc", ".nc4")
NUMPY_SUFFIXES = (".npy", ".npz")


def detect_format(path: str | Path) -> str:
    """'numpy', 'well', 'pdebench' or 'poseidon', from the extension and the HDF5 layout."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        return "numpy"
    if suffix not in HDF5_SUFFIXES:
        raise FormatError(
            f"{path}: unsupported extension {suffix!r}; supported {HDF5_SUFFIXES + NUMPY_SUFFIXES}"
        )
    with open_hdf5(path) as f:
        keys = set(f.keys())
        if keys & {"t0_fields", "t1_fields"}:
            return "well"
        if keys & {*SCALAR_FIELDS, *VECTOR_FIELDS} or any(
            "data" in f[k] for k in keys if hasattr(f[k], "keys")
        ):
            return "pdebench"
        return "poseidon"


def read_any(path: str | Path, format: str | None = None, **kw) -> list:
    """Reads any supported file; keyword arguments go to the format's reader (fields, pde, variable, ...)."""
    readers = {"numpy": read_numpy, "well": read_well, "pdebench": read_pdebench, "poseidon": read_poseidon}
    fmt = format or detect_format(path)
    if fmt not in readers:
        raise FormatError(f"{path}: unknown format {fmt!r}; choose from {sorted(readers)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        return readers[fmt](path, **kw)
    except TypeError as exc:
        raise FormatError(
            f"{path}: options {sorted(kw)} do not all apply to the {fmt!r} format ({exc})"
        ) from exc


__all__ = [
    "FormatError",
    "detect_format",
    "read_any",
    "read_numpy",
    "read_pdebench",
    "read_poseidon",
    "read_well",
]
