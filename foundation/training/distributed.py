"""Work done once, on the main process, and shared with every rank (Hub lookups, run-folder checks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

T = TypeVar("T")


def on_main_then_share(accelerator: Accelerator, fn: Callable[[], T]) -> T:
    """`fn()` on the main process, its result broadcast to every rank. An error raised by `fn` is raised
    on every rank (same class when it can be rebuilt from its message), so no rank waits for a broadcast
    that never comes."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except Exception as e:  # shared with the other ranks, then raised everywhere
            error = e
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return result
    shared = [result, None if error is None else (type(error), str(error))]
    broadcast_object_list(shared)
    if error is not None:
        raise error
    if shared[1] is not None:
        kind, message = shared[1]
        try:
            rebuilt = kind(message)
        except Exception:
            rebuilt = RuntimeError(f"{kind.__name__} on the main process: {message}")
        raise rebuilt
    return shared[0]
