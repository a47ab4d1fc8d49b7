"""`.npy` / `.npz` arrays: `u` as [N, T, C, H, W] or one trajectory [T, C, H, W]; never unpickled.

An `.npz` holds `u` (or its only array), optionally `t` [T] and `fields` (strings); an `.npy` needs
`fields` from the caller. Complex arrays are refused unless `split_complex` makes each complex channel
two real ones (real, then imaginary part).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipelines.formats.common import (
    FormatError,
    UnnamedChannelsError,
    build,
    check_dtype,
    split_complex_channels,
)


def read_numpy(
    path: str | Path,
    fields: Sequence[str] | None = None,
    pde: str | None = None,
    key: str | None = None,
    split_complex: bool = False,
) -> list:
    path = Path(path)
    t = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                key = key or ("u" if "u" in keys else (keys[0] if len(keys) == 1 else None))
                if key is None or key not in keys:
                    raise FormatError(f"{path}: array {key or 'u'!r} not found; the archive holds {keys}")
                u = loaded[key]
                t = loaded["t"] if "t" in keys else None
                if fields is None and "fields" in keys:
                    fields = [str(x) for x in loaded["fields"]]
        else:
            u = loaded
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"{path}: cannot be read as numpy data, truncated or corrupt ({exc})") from exc
    check_dtype(path, key or "u", u.dtype, split_complex)
    if u.ndim == 4:
        u = u[None]
    if u.ndim != 5:
        raise FormatError(
            f"{path}: field {key or 'u'!r} must be [N, T, C, H, W] or [T, C, H, W], got {u.shape}"
        )
    if u.dtype.kind == "c":
        u, fields = split_complex_channels(u, fields, path)
    if fields is None:
        raise UnnamedChannelsError(
            f"{path}: no field names for its {u.shape[2]} channel(s); name them with fields=... (--fields)",
            u.shape[2],
        )
    return build(np.asarray(u, dtype=np.float32), t, fields, pde or path.stem, path)
