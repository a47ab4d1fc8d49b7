"""Baselines under mixed precision: the FNO keeps its FFTs in fp32 under bf16 autocast, and the few-shot
loop trains it with `mixed_precision="bf16"` as the studies do on a GPU."""

from __future__ import annotations

import torch

from eval_suite.baselines.fno import build_fno
from finetune.trainer import TrainConfig, train


def _pairs(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        u = torch.randn(2, 16, 16, generator=g)
        rows.append({"pixel_values": u, "time": torch.rand((), generator=g), "labels": torch.roll(u, 1, -1)})
    return rows


def test_fno_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_fno(2, 2, modes=4, hidden_channels=8, n_layers=2)
    batch = {k: torch.stack([r[k] for r in _pairs(2, 0)]) for k in ("pixel_values", "time", "labels")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.output.dtype == torch.float32
    reference = model(**batch).output
    torch.testing.assert_close(out.output, reference)  # fp32 inside: the same numbers as without autocast


def test_fno_trains_with_bf16_mixed_precision():
    torch.manual_seed(0)
    model = build_fno(2, 2, modes=4, hidden_channels=8, n_layers=2)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, device="cpu", mixed_precision="bf16")
    result = train(model, _pairs(12, 0), _pairs(4, 1), config=cfg)
    assert result.mixed_precision == "bf16" and result.best_val_loss < result.initial_val_loss
