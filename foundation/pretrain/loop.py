"""Pretraining: scOT on a streamed multi-PDE mixture, as hooks on the training core.

Each rank streams its own share of the mixture; the training core (`foundation.training`) runs accelerate
(one CPU process to many GPUs), checkpoints with the stream position and resumes exactly. The final model
folder holds safetensors weights, config, training arguments, the summary and a model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from accelerate.utils import set_seed

from data_pipelines.corpus import load_trajectories
from data_pipelines.fields import FIELDS
from data_pipelines.semigroup import PairDataset
from data_pipelines.streaming import CorpusSource, MixtureStream, make_loader, resolve_corpus
from foundation.conditioning import build_vocabulary
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.optimization import make_optimizer, warmup_cosine
from foundation.training import Trainer, TrainHooks, make_accelerator
from foundation.training.core import METRICS_FILE
from foundation.training.distributed import on_main_then_share

logger = logging.getLogger(__name__)


def default_channels(sources: list[CorpusSource], families: list[str] | None) -> list[str]:
    """The union of the selected families' fields, in field-vocabulary order."""
    used = set()
    for source in sources:
        for name, info in source.stats["families"].items():
            if families is None or name in families:
                used.update(info["fields"])
    if not used:
        raise ValueError(f"no family of {families} found in corpora {[s.name for s in sources]}")
    return [f for f in FIELDS if f in used] + sorted(used - set(FIELDS))


def trajectory_counts(sources: list[CorpusSource], families: list[str]) -> dict[str, int]:
    """Trajectories per streamed family, from the corpora's statistics."""
    return {
        name: int(info["count"])
        for source in sources
        for name, info in source.stats["families"].items()
        if name in families
    }


def shared_sources(accelerator, config: PretrainConfig) -> list[CorpusSource]:
    """The corpora resolved once by rank 0 (stats.json, Hub revision, shard check) and shared with every rank."""
    return on_main_then_share(accelerator, lambda: resolve_corpus(config.corpus, config.families))


def build_model(config: PretrainConfig, channels: list[str], vocabulary: list[str] | None = None) -> ScOT:
    """scOT of the configured preset on `channels` that records its PDE `vocabulary` (the pretraining families)."""
    fields = dict(num_channels=len(channels), num_out_channels=len(channels), field_names=list(channels))
    # one relative-loss group per channel: fields have very different scales
    fields["channel_slice_list_normalized_loss"] = list(range(len(channels) + 1))
    if vocabulary is not None:
        fields["pde_vocabulary"] = vocabulary
        if config.model_overrides.get("use_operator_conditioning"):
            fields["num_pde_families"] = max(
                len(vocabulary), config.model_overrides.get("num_pde_families", 0)
            )
    return ScOT(ScOTConfig.from_preset(config.preset, **{**config.model_overrides, **fields}))


class PretrainHooks(TrainHooks):
    """Held-out loss (and downstream tasks, when given) at evaluation steps."""

    def __init__(self, config: PretrainConfig, eval_data, downstream=None):
        self.config, self.eval_data, self.downstream = config, eval_data, downstream

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        metrics = {}
        if self.eval_data is not None:
            metrics["eval/loss"] = trainer.mean_loss(self.eval_data, self.config.batch_size)
        if self.downstream is not None and trainer.state.step % self.config.downstream_every == 0:
            metrics.update(self.downstream(trainer))
        return metrics


def _eval_every(config: PretrainConfig, downstream) -> int | None:
    every = [config.eval_every] if config.eval_corpus else []
    every += [config.downstream_every] if downstream is not None else []
    return math.gcd(*every) if every else None


def build_trainer(config: PretrainConfig) -> tuple[Trainer, MixtureStream, list[str]]:
    """The run's training core, its stream and channel layout (`pretrain` fits it; tests may wrap its loader)."""
    acc = make_accelerator(config, project_dir=config.out)
    set_seed(config.seed)
    sources = shared_sources(acc, config)
    channels = config.channels or default_channels(sources, config.families)
    # the families the model learns, recorded in its config; with operator conditioning pde_id i is vocabulary[i]
    vocabulary = build_vocabulary(
        f for s in sources for f in s.stats["families"] if config.families is None or f in config.families
    )
    conditioned = bool(config.model_overrides.get("use_operator_conditioning"))
    stream = MixtureStream(
        sources,
        channels,
        families=config.families,
        weights=config.weights,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        rank=acc.process_index,
        world_size=acc.num_processes,
        pairs_per_trajectory=config.pairs_per_trajectory,
        stopping_strategy=config.stopping_strategy,
        pde_vocabulary=vocabulary if conditioned else None,
    )
    loader = make_loader(stream, config.batch_size, config.num_workers, pin_memory=acc.device.type == "cuda")
    eval_data = None
    if config.eval_corpus:
        held_out = [
            t
            for src in config.eval_corpus
            for t in load_trajectories(src, config.families, config.eval_trajectories)
        ]
        eval_data = PairDataset(held_out, channels, stream.normalizer)
    downstream = None
    if config.downstream:
        from foundation.pretrain.downstream import DownstreamSuite

        downstream = DownstreamSuite(config.downstream, channels, stream.normalizer, config)
    model = build_model(config, channels, vocabulary)
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    trainer = Trainer(
        config,
        acc,
        model,
        optimizer,
        scheduler,
        loader,
        PretrainHooks(config, eval_data, downstream),
        eval_every=_eval_every(config, downstream),
        max_minutes=config.max_minutes,
        count_flops=True,
        run_config=config.to_dict(),
        project_name="pdefm-pretrain",
    )
    return trainer, stream, channels


def pretrain(config: PretrainConfig) -> dict:
    """Run pretraining as configured (call under `accelerate launch` for several processes)."""
    trainer, stream, channels = build_trainer(config)
    trainer.fit()
    summary = _summary(trainer, config, channels, stream)
    state_dict = trainer.export_state_dict()
    if trainer.accelerator.is_main_process:
        _write_model(trainer, config, summary, state_dict)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return summary


def _summary(trainer: Trainer, config: PretrainConfig, channels, stream) -> dict:
    state, acc = trainer.state, trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    logged = [r for r in state.history if "train/loss" in r]
    history = [r["train/loss"] for r in logged]
    evals = [[r["step"], r["eval/loss"]] for r in state.history if "eval/loss" in r]
    tail = history[-min(len(history), 10) :]
    return {
        "steps": state.step,
        "epoch": state.epoch,
        "examples_seen": state.examples,
        "examples_per_family": state.family_counts,
        "flops": state.flops,
        "flops_per_example": state.flops_per_example,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": acc.num_processes,
        "final_train_loss": sum(tail) / len(tail) if tail else math.nan,
        "final_eval_loss": evals[-1][1] if evals else None,
        "loss_history": history,
        "loss_steps": [r["step"] for r in logged],
        "eval_history": evals,
        "elapsed_s": state.elapsed_s,
        "channels": channels,
        "families": trajectory_counts(stream.sources, stream.families),
        "trajectories": sum(trajectory_counts(stream.sources, stream.families).values()),
        "weights": dict(zip(stream.families, stream.weights, strict=True)),
        "corpus": config.corpus,
        "preset": config.preset,
        "mixed_precision": acc.mixed_precision,
    }


def _write_model(trainer: Trainer, config: PretrainConfig, summary: dict, state_dict) -> None:
    """The final model folder, written beside and renamed into place (never half a model), then pushed."""
    from foundation.hub.card import write_model_card
    from foundation.hub.push import push_checkpoint

    out = Path(config.out)
    folder, tmp = out / "model", out / ".tmp-model"
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
        tmp, state_dict=state_dict, safe_serialization=True
    )
    config.save(tmp / "training_args.json")
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=1))
    if (out / METRICS_FILE).is_file():  # the run's records travel with the model (and its card)
        shutil.copyfile(out / METRICS_FILE, tmp / METRICS_FILE)
    write_model_card(tmp, summary, config.to_dict())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    config.save(out / "training_args.json")
    if config.push_to:
        url = push_checkpoint(folder, config.push_to)
        trainer.accelerator.print(f"pushed {folder} to {url}")
