"""Training steps never wait on the host: a pretraining step and a fine-tuning step of the training core
read no tensor value between logging steps (the CPU stands in for a GPU: any host read would sync it)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sync_counter import SyncCounter

from finetune.trainer import TrainConfig
from foundation.training import Trainer, TrainHooks, make_accelerator, map_loader

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from core_run import TinyOperator, dataset  # noqa: E402


def _steps_without_syncs(trainer: Trainer, steps: int = 3) -> SyncCounter:
    data = trainer.batches()
    trainer.train_step(data)  # the first step counts FLOPs and warms up; not a steady-state step
    with SyncCounter() as syncs:
        for _ in range(steps):
            trainer.train_step(data)
    return syncs


def test_finetuning_step_reads_nothing_on_the_host():
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=10, batch_size=4, device="cpu", log_every=10)
    acc = make_accelerator(cfg)
    model = TinyOperator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = map_loader(dataset(16, 0), 4)
    trainer = Trainer(cfg, acc, model, optimizer, scheduler, loader, TrainHooks(), count_flops=True)
    syncs = _steps_without_syncs(trainer)
    assert syncs.count == 0, syncs.report()


def test_pretraining_step_reads_nothing_on_the_host(tmp_path):
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers.registry import resolve_families
    from foundation.pretrain.config import PretrainConfig
    from foundation.pretrain.loop import build_trainer

    generate_corpus(
        tmp_path / "corpus", resolve_families("diffusion"), trajectories=4, seed=0, shard_size=4,
        resolution=32, snapshots=3, progress=False,
    )  # fmt: skip
    config = PretrainConfig(
        corpus=[str(tmp_path / "corpus")],
        out=str(tmp_path / "run"),
        model_overrides={"image_size": 32},
        max_steps=10,
        batch_size=2,
        log_with="none",
        progress=False,
    )
    trainer, _, _ = build_trainer(config)
    syncs = _steps_without_syncs(trainer)
    assert syncs.count == 0, syncs.report()
