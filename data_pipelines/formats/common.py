"""Shared pieces of the file readers: opening HDF5 safely with clear errors and building Trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from data_pipelines.fields import check_fields
from data_pipelines.paths import safe_name
from data_pipelines.trajectory import Trajectory


class FormatError(ValueError):
    """A user file that does not match its format; the message names the file, the field and the shapes."""


class UnnamedChannelsError(FormatError):
    """The file stores no names for its `channels` channels; the caller's `fields` can name them."""

    def __init__(self, message: str, channels: int):
        super().__init__(message)
        self.channels = channels


def refuse_outside_data(path, f: h5py.File) -> None:
    """FormatError for any external link, external-storage dataset or virtual dataset in `f`.

    Each makes reading the file read other files of the machine (whose bytes would then land in a
    corpus that may be pushed), so a user file must hold its own data.
    """
    found: list[str] = []

    def visit(name: str, link) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append(f"{name!r} is an external link to {link.filename}:{link.path}")
        elif isinstance(link, h5py.HardLink):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.external:
                    files = sorted({str(e[0]) for e in obj.external})
                    found.append(f"dataset {name!r} has its data in external file(s) {files}")
                elif obj.is_virtual:
                    files = sorted({str(m.file_name) for m in obj.virtual_sources()})
                    found.append(f"dataset {name!r} is a virtual dataset mapping file(s) {files}")

    f.visititems_links(visit)
    if found:
        raise FormatError(
            f"{path}: {found[0]}; refused, pdefm reads only data stored in the file itself "
            f"(copy the data into the file first)"
        )


@contextmanager
def open_hdf5(path: str | Path):
    """h5py.File opened read-only and checked to hold its own data; a truncated or corrupt file, an external
    link, external storage or a virtual dataset raises FormatError naming the file and the dataset."""
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read as HDF5/netCDF4, truncated or corrupt ({exc})") from exc
    try:
        refuse_outside_data(path, f)
        yield f
    finally:
        f.close()


def check_dtype(path, name: str, dtype: np.dtype, split_complex: bool = False) -> None:
    """Numbers only; complex data only with `split_complex` (else its imaginary part would be lost)."""
    if dtype.kind == "c" and not split_complex:
        raise FormatError(
            f"{path}: field {name!r} is complex ({dtype}); refused, as its imaginary part would be dropped; "
            f"split it into real channels with split_complex=True (`--split-complex`)"
        )
    if dtype.kind not in "biufc":
        raise FormatError(f"{path}: field {name!r} must hold numbers, got dtype {dtype}")


def read_array(
    path, dataset: h5py.Dataset, name: str, rank: int, layout: str, split_complex: bool = False
) -> np.ndarray:
    """The whole dataset as float32 (complex64 with `split_complex`) after checking rank and dtype; a
    corrupt chunk raises naming the field."""
    if dataset.ndim != rank:
        raise FormatError(f"{path}: field {name!r} must have rank {rank} {layout}, got shape {dataset.shape}")
    check_dtype(path, name, dataset.dtype, split_complex)
    try:
        data = dataset[()]
    except (OSError, RuntimeError) as exc:
        raise FormatError(f"{path}: field {name!r} could not be read, the file is corrupt ({exc})") from exc
    return np.asarray(data, dtype=np.complex64 if data.dtype.kind == "c" else np.float32)


def split_complex_channels(u: np.ndarray, fields: Sequence[str] | None, path) -> tuple[np.ndarray, list]:
    """Complex `u[N, T, C, H, W]` as real `[N, T, 2C, H, W]` (each channel's real then imaginary part) and
    the 2C field names: `fields` when given, else `re, im` for one complex channel."""
    n_c = u.shape[2]
    real = np.stack([u.real, u.imag], axis=3).reshape(*u.shape[:2], 2 * n_c, *u.shape[3:])
    if fields is None:
        if n_c != 1:
            raise UnnamedChannelsError(
                f"{path}: {n_c} complex channels split into {2 * n_c} real ones (re, im each); "
                f"pass fields=... with {2 * n_c} names",
                2 * n_c,
            )
        fields = ["re", "im"]
    return real.astype(np.float32, copy=False), list(fields)


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
    try:
        safe_name(pde, "family id (pde)")
    except ValueError as exc:
        raise FormatError(f"{path}: {exc}") from None
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
