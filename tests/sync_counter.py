"""Counting host synchronisations on the CPU: every way a step can make the host wait for device values.

A CPU run cannot observe a CUDA sync, but every sync starts from one of a few calls, and those are visible here:
reading a scalar (`item`, `bool`, `float`, `int`, `if tensor:` — all `aten._local_scalar_dense`), ops whose
output shape depends on values (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, ...) or that
return a Python value (`equal`), and copies out of a tensor that bypass the dispatcher (`tolist`, `numpy`).

    with SyncCounter() as syncs:
        train_step()
    assert syncs.count == 0, syncs.report()
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "nonzero_static",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "equal",
        "allclose",
        "repeat_interleave",
        "bincount",
        "histc",
    }
)
"""aten ops (overload packets) that wait for device values."""
_UNDISPATCHED = ("tolist", "numpy", "__array__")
"""Tensor methods that read values without going through the dispatcher."""


def _has_mask_index(args) -> bool:
    """Whether an index/index_put call indexes with a boolean mask (which needs the mask's nonzero count)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class SyncCounter(TorchDispatchMode):
    """Counts host syncs within the block; `report()` names each op and the line of code that caused it."""

    def __init__(self):
        super().__init__()
        self.where: Counter[str] = Counter()
        self._saved: dict[str, object] = {}

    @property
    def count(self) -> int:
        return sum(self.where.values())

    def report(self) -> str:
        return "; ".join(f"{n}x {where}" for where, n in self.where.most_common())

    def _record(self, name: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "torch/" not in f.filename]
        origin = f"{frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else "?"
        self.where[f"{name} at {origin}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        # repeat_interleave syncs only when it must read the repeats to size its output
        if name in SYNC_OPS and not (name == "repeat_interleave" and "output_size" in (kwargs or {})):
            self._record(f"aten.{name}")
        elif name in ("index", "index_put", "index_put_") and _has_mask_index(args):
            self._record(f"aten.{name} with a boolean mask")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter = self
        for method in _UNDISPATCHED:
            original = getattr(torch.Tensor, method)
            self._saved[method] = original

            def counted(tensor, *args, _original=original, _name=method, **kwargs):
                counter._record(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, method, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        self._saved.clear()
        return super().__exit__(*exc)
