"""Training FLOPs per example, counted once with `torch.utils.flop_counter`."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def flops_per_example(model: torch.nn.Module, batch: dict) -> float:
    """Training FLOPs of one example: 3x the counted forward FLOPs of the first example of `batch` (the
    backward pass costs about twice the forward, the usual estimate for dense networks). No backward runs,
    so no gradient or distributed hook is touched."""
    one = {k: v[:1] for k, v in batch.items()}
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(**one)
    model.train(was_training)
    return 3.0 * float(counter.get_total_flops())
