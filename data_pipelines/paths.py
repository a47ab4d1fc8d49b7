"""User-given names that become paths: a local path or a Hub id, and names that must stay inside a folder.

A string names a Hub repo only if it looks like ``org/name`` and nothing of that name exists locally;
``./x``, ``/abs/x``, ``~/x``, ``x.h5``, ``a/b/c`` or ``runs/x`` (with ``runs/`` a local folder) that do
not exist are missing paths, reported as such instead of being looked up on the Hub.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Names ending like this are files the user has, not Hub repos (whose names may contain dots).
FILE_SUFFIXES = (
    ".h5",
    ".hdf5",
    ".hdf",
    ".nc",
    ".nc4",
    ".npy",
    ".npz",
    ".parquet",
    ".json",
    ".yaml",
    ".yml",
    ".safetensors",
    ".bin",
    ".pt",
)


def looks_like_hub_id(source: str) -> bool:
    """`org/name` syntax, no `..`, no data-file suffix, and its `org` is not an existing local folder."""
    if not HUB_ID.match(source) or ".." in source or source.lower().endswith(FILE_SUFFIXES):
        return False
    return not Path(source.split("/", 1)[0]).is_dir()


def local_or_hub(source: str | Path, what: str) -> Path | str:
    """`source` as a Path when it exists, as a Hub id string when it looks like one, else FileNotFoundError.

    `what` names the input in the message (e.g. "data", "corpus", "checkpoint").
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, str) and looks_like_hub_id(source):
        return source
    raise FileNotFoundError(
        f"{what} {str(source)!r} does not exist: no such file or folder (and not a Hub id, which looks like org/name)"
    )


def safe_name(name: str, what: str) -> str:
    """`name` if it can be one path component (no separator, not '.'/'..', no leading dot or control
    character), else ValueError: such names become folder names and must never leave their parent."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\"))
        or any(ord(ch) < 32 for ch in name)
    ):
        raise ValueError(
            f"{what} {name!r} cannot be used as a folder name: use letters, digits, '_', '-', '.' "
            f"without path separators or a leading '.'"
        )
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """`root / parts...`, refused with ValueError unless it resolves to a path inside `root`."""
    root_resolved = Path(root).resolve()
    target = Path(root, *parts)
    if not target.resolve().is_relative_to(root_resolved):
        raise ValueError(f"{'/'.join(parts)!r} would be written outside {str(root)!r}; refused")
    return target
