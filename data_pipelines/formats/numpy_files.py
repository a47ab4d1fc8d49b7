"""`.npy` / `.npz` arrays: `u` as [N, T, C, H, W] or one trajectory [T, C, H, W]; never unpickled.

An `.npz` holds `u` (or its only array), optionally `t` [T] and `fields` (strings); an `.npy` needs
`fields` from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipelines.formats.common import FormatError, build


def read_numpy(
    path: str | Path, fields: Sequence[str] | None = None, pde: str | None = None, key: str | None = None
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
    if u.ndim == 4:
        u = u[None]
    if u.ndim != 5:
        raise FormatError(
            f"{path}: field {key or 'u'!r} must be [N, T, C, H, W] or [T, C, H, W], got {u.shape}"
        )
    if fields is None:
        raise FormatError(f"{path}: no field names for its {u.shape[2]} channels; pass fields=...")
    return build(np.asarray(u, dtype=np.float32), t, fields, pde or path.stem, path)
