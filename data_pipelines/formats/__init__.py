"""Readers for the files users already have -> `list[Trajectory]`; `read_any` dispatches by extension
and content (Poseidon netCDF/HDF5, PDEBench 2D HDF5, The Well HDF5, numpy), or by an explicit `format`.

HDF5 files must hold their own data: external links, external storage and virtual datasets are refused.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import h5py

from data_pipelines.formats.common import FormatError, UnnamedChannelsError, open_hdf5
from data_pipelines.formats.numpy_files import read_numpy
from data_pipelines.formats.pdebench import is_per_field_layout, read_pdebench
from data_pipelines.formats.poseidon import read_poseidon
from data_pipelines.formats.well import read_well

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc", ".nc4")
NUMPY_SUFFIXES = (".npy", ".npz")
READERS = {"numpy": read_numpy, "well": read_well, "pdebench": read_pdebench, "poseidon": read_poseidon}
FORMATS = tuple(READERS)


def detect_format(path: str | Path) -> str:
    """'numpy', 'well', 'pdebench' or 'poseidon', from the extension and the HDF5 layout."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        return "numpy"
    if suffix not in HDF5_SUFFIXES:
        raise FormatError(
            f"{path}: unsupported extension {suffix!r}; supported {HDF5_SUFFIXES + NUMPY_SUFFIXES} "
            f"(or name the format with format=... / --format)"
        )
    with open_hdf5(path) as f:
        keys = set(f.keys())
        if keys & {"t0_fields", "t1_fields"}:
            return "well"
        if is_per_field_layout(f) or any(isinstance(f[k], h5py.Group) and "data" in f[k] for k in keys):
            return "pdebench"
        return "poseidon"


def check_format(format: str | None) -> str | None:
    """`format` if it names a reader (or is None), else FormatError listing the formats."""
    if format is not None and format not in READERS:
        raise FormatError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    return format


def read_any(path: str | Path, format: str | None = None, **kw) -> list:
    """Reads any supported file; `format` overrides detection; keyword arguments go to the format's
    reader (fields, pde, variable, split_complex, ...)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = check_format(format) or detect_format(path)
    reader = READERS[fmt]
    kw = {k: v for k, v in kw.items() if v is not None and v is not False}  # unset options
    unknown = sorted(set(kw) - set(inspect.signature(reader).parameters))
    if unknown:
        raise FormatError(f"{path}: options {unknown} do not apply to the {fmt!r} format")
    return reader(path, **kw)


__all__ = [
    "FORMATS",
    "FormatError",
    "UnnamedChannelsError",
    "check_format",
    "detect_format",
    "read_any",
    "read_numpy",
    "read_pdebench",
    "read_poseidon",
    "read_well",
]
