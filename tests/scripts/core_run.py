"""A small fine-tuning run on the training core, for tests: `python core_run.py OUT [resume] [sleep_per_step]`.

Fits a tiny time-conditioned convolutional model to a linear operator (seeded data), checkpointing every
step, and writes OUT/final.safetensors with the trained weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from finetune.trainer import TrainConfig, train


class TinyOperator(nn.Module):
    """u -> conv(u) + t * conv(u), with the relative L2 loss; ScOT's forward signature."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, pixel_values, time, labels=None, **_):
        out = self.a(pixel_values) + time.view(-1, 1, 1, 1) * self.b(pixel_values)
        loss = None if labels is None else ((out - labels) ** 2).mean() / (labels**2).mean()
        return {"loss": loss, "output": out}


def dataset(n: int, seed: int, nan_from: int | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        u = torch.randn(1, 8, 8, generator=g)
        t = torch.rand((), generator=g)
        y = torch.roll(u, 1, dims=-1) * (1 + t)
        if nan_from is not None and i >= nan_from:
            y = torch.full_like(y, float("nan"))
        rows.append({"pixel_values": u, "time": t, "labels": y})
    return rows


def run(out: str | None, resume: str = "never", sleep: float = 0.0, **overrides):
    torch.manual_seed(0)
    model = TinyOperator()
    if sleep:
        original = model.forward

        def slow(*a, **k):
            time.sleep(sleep)
            return original(*a, **k)

        model.forward = slow
    cfg = TrainConfig(
        **{
            "out": out,
            "epochs": 4,
            "batch_size": 4,
            "lr": 3e-2,
            "checkpoint_every": 1,
            "resume": resume,
            "device": "cpu",
            **overrides,
        }
    )
    result = train(model, dataset(16, 0), dataset(4, 1), config=cfg)
    return model, result


if __name__ == "__main__":
    out = sys.argv[1]
    model, _ = run(
        out, sys.argv[2] if len(sys.argv) > 2 else "never", float(sys.argv[3]) if len(sys.argv) > 3 else 0
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out) / "final.safetensors")
    )
