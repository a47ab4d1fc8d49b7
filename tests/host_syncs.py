"""Count the host syncs a piece of code makes: every Python-level read of a tensor's value on the host
(`item`, `tolist`, `bool`, `float`, `int`, `numpy`), which on a GPU waits for the device."""

from __future__ import annotations

import contextlib
import traceback

import torch

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextlib.contextmanager
def count_host_syncs():
    """Yields a list that collects one short stack per host read made inside the block."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            calls.append(f"{name}: " + "".join(traceback.format_stack(limit=4)[:-1]))
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
