"""The pretraining loop: scOT on a streamed multi-PDE mixture under `accelerate` (1 CPU process to many GPUs).

Each rank streams its own disjoint share of the mixture (`MixtureStream` splits by rank and worker, with
equal step counts per rank); accelerate wraps the model in DDP/FSDP as launched. The data position is the
number of batches this rank consumed in the current epoch, so a resumed run skips exactly those and its loss
curve continues the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from data_pipelines.corpus import load_trajectories
from data_pipelines.fields import FIELDS
from data_pipelines.semigroup import PairDataset
from data_pipelines.streaming import MixtureStream
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.optimization import make_optimizer, warmup_cosine

logger = logging.getLogger(__name__)


def corpus_stats(source: str) -> dict:
    """stats.json of a corpus folder or Hub dataset id."""
    path = Path(source)
    if not path.exists():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, "stats.json", repo_type="dataset")).parent
    stats_file = path / "stats.json"
    if not stats_file.exists():
        raise FileNotFoundError(
            f"{source}: not a pdefm corpus (no stats.json); make one with `pdefm data generate`"
        )
    return json.loads(stats_file.read_text())


def default_channels(sources: list[str], families: list[str] | None) -> list[str]:
    """The union of the selected families' fields, in field-vocabulary order."""
    used = set()
    for source in sources:
        for name, info in corpus_stats(source)["families"].items():
            if families is None or name in families:
                used.update(info["fields"])
    if not used:
        raise ValueError(f"no family of {families} found in corpora {sources}")
    return [f for f in FIELDS if f in used] + sorted(used - set(FIELDS))


def resolve_mixed_precision(requested: str) -> str:
    """ "auto": bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if requested == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision fp16 needs a CUDA device; on CPU use 'bf16' or 'no'")
    return requested


def build_model(config: PretrainConfig, channels: list[str]) -> ScOT:
    fields = dict(num_channels=len(channels), num_out_channels=len(channels), field_names=list(channels))
    # one relative-loss group per channel: fields have very different scales
    fields["channel_slice_list_normalized_loss"] = list(range(len(channels) + 1))
    model = ScOT(ScOTConfig.from_preset(config.preset, **{**fields, **config.model_overrides}))
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant checkpoints
    if config.compile_blocks:
        model.compile_blocks()
    return model


class Trainer:
    """One pretraining run; `run()` trains to `max_steps` (or `max_minutes`) and returns the summary."""

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.out = Path(config.out)
        trackers = [t.strip() for t in config.log_with.split(",") if t.strip() and t.strip() != "none"]
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.grad_accum,
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            log_with=trackers or None,
            project_dir=str(self.out),
        )
        acc = self.accelerator
        set_seed(config.seed)
        self.channels = config.channels or default_channels(config.corpus, config.families)
        self.stream = MixtureStream(
            config.corpus,
            self.channels,
            families=config.families,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            pairs_per_trajectory=config.pairs_per_trajectory,
        )
        self.eval_data = None
        if config.eval_corpus:
            held_out = [
                t
                for src in config.eval_corpus
                for t in load_trajectories(src, config.families, config.eval_trajectories)
            ]
            self.eval_data = PairDataset(held_out, self.channels, self.stream.normalizer)
        model = build_model(config, self.channels)
        optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
        self.scheduler = warmup_cosine(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.state = {
            "step": 0,
            "epoch": 0,
            "batches_in_epoch": 0,
            "examples": 0,
            "loss_history": [],
            "eval_history": [],
            "elapsed_s": 0.0,
        }
        if config.resume:
            folder = latest_checkpoint(self.out)
            if folder is None:
                logger.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            else:
                self.state = load_checkpoint(folder, acc, self.model, self.optimizer, self.scheduler)
                acc.print(f"resumed from {folder} at step {self.state['step']}")

    # ---- data ---------------------------------------------------------------------------------------

    def batches(self) -> Iterator[dict]:
        """Endless batches; updates the data position, skipping what a resumed run already consumed."""
        while True:
            self.stream.set_epoch(self.state["epoch"])
            # a private generator: creating the iterator must not draw from the global RNG, or a resumed
            # run (which creates it mid-epoch) would diverge from the uninterrupted one
            generator = torch.Generator().manual_seed(self.config.seed + self.state["epoch"])
            loader = torch.utils.data.DataLoader(
                self.stream,
                batch_size=self.config.batch_size,
                num_workers=self.config.num_workers,
                generator=generator,
            )
            skip, seen = self.state["batches_in_epoch"], 0
            for k, batch in enumerate(loader):
                seen += 1
                if k < skip:
                    continue
                self.state["batches_in_epoch"] = k + 1
                device = self.accelerator.device
                yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if seen == 0:
                raise RuntimeError(
                    f"rank {self.accelerator.process_index}: the corpus stream yielded no example"
                )
            self.state["epoch"] += 1
            self.state["batches_in_epoch"] = 0

    # ---- evaluation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the held-out pairs (each rank scores every world_size-th pair; sums are reduced)."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)  # no DDP collectives: ranks may score different batch counts
        model.eval()
        subset = torch.utils.data.Subset(
            self.eval_data, range(acc.process_index, len(self.eval_data), acc.num_processes)
        )
        total = torch.zeros(2, device=acc.device)
        for batch in torch.utils.data.DataLoader(subset, batch_size=self.config.batch_size):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                loss = model(**batch).loss
            n = batch["pixel_values"].shape[0]
            total += torch.stack([loss.float() * n, torch.tensor(float(n), device=acc.device)])
        total = acc.reduce(total, "sum")
        model.train()
        return (total[0] / total[1]).item()

    # ---- training -----------------------------------------------------------------------------------

    def train_step(self, data: Iterator[dict]) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; returns (loss averaged over ranks, grad norm)."""
        acc, cfg = self.accelerator, self.config
        losses, grad_norm = [], torch.tensor(0.0)
        for _ in range(cfg.grad_accum):
            batch = next(data)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss = self.model(**batch).loss
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(loss.detach().float())
            self.state["examples"] += batch["pixel_values"].shape[0] * acc.num_processes
        if not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        mean = acc.reduce(torch.stack(losses).mean(), "mean").item()
        return mean, float(grad_norm)

    def _should_stop(self, started: float) -> bool:
        """Every rank stops together once rank 0's wall clock passes max_minutes."""
        if self.config.max_minutes is None:
            return False
        over = self.state["elapsed_s"] + time.monotonic() - started > 60 * self.config.max_minutes
        flag = torch.tensor(float(over and self.accelerator.is_main_process), device=self.accelerator.device)
        return self.accelerator.reduce(flag, "sum").item() > 0

    def run(self) -> dict:
        acc, cfg, state = self.accelerator, self.config, self.state
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "training_args.json")
        acc.init_trackers("pdefm-pretrain", config=_flat(cfg.to_dict()))
        bar = tqdm(
            total=cfg.max_steps,
            initial=state["step"],
            desc="pretrain",
            disable=not (cfg.progress and acc.is_local_main_process),
        )
        data = self.batches()
        started = time.monotonic()
        self.model.train()
        while state["step"] < cfg.max_steps:
            loss, grad_norm = self.train_step(data)
            state["step"] += 1
            state["loss_history"].append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.max_steps:
                lr = self.scheduler.get_last_lr()[0]
                acc.log(
                    {
                        "train/loss": loss,
                        "train/lr": lr,
                        "train/grad_norm": grad_norm,
                        "train/epoch": state["epoch"],
                    },
                    step=state["step"],
                )
            if self.eval_data is not None and (
                state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps
            ):
                eval_loss = self.evaluate()
                state["eval_history"].append([state["step"], eval_loss])
                acc.log({"eval/loss": eval_loss}, step=state["step"])
            stop = self._should_stop(started)
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.max_steps or stop:
                self._checkpoint(started)
            if stop:
                acc.print(f"stopping at step {state['step']}: --max-minutes {cfg.max_minutes} reached")
                break
        bar.close()
        state["elapsed_s"] += time.monotonic() - started
        summary = self._finish()
        acc.end_training()
        return summary

    def _checkpoint(self, started: float) -> None:
        snapshot = {**self.state, "elapsed_s": self.state["elapsed_s"] + time.monotonic() - started}
        save_checkpoint(
            self.out,
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            snapshot,
            self.config.keep_checkpoints,
        )

    def _finish(self) -> dict:
        """Final model folder (weights, config, training args, summary, model card), pushed if asked."""
        from foundation.hub.card import write_model_card
        from foundation.hub.push import push_checkpoint

        acc, cfg, state = self.accelerator, self.config, self.state
        history = state["loss_history"]
        tail = history[-min(len(history), 10) :]
        summary = {
            "steps": state["step"],
            "epoch": state["epoch"],
            "batches_in_epoch": state["batches_in_epoch"],
            "examples_seen": state["examples"],
            "world_size": acc.num_processes,
            "final_train_loss": sum(tail) / len(tail) if tail else math.nan,
            "final_eval_loss": state["eval_history"][-1][1] if state["eval_history"] else None,
            "loss_history": history,
            "eval_history": state["eval_history"],
            "elapsed_s": state["elapsed_s"],
            "channels": self.channels,
            "families": {f: n for f, n in self.stream.counts.items()},
            "corpus": cfg.corpus,
            "preset": cfg.preset,
            "mixed_precision": acc.mixed_precision,
        }
        if acc.is_main_process:
            folder = self.out / "model"
            acc.unwrap_model(self.model).save_pretrained(folder, safe_serialization=True)
            cfg.save(folder / "training_args.json")
            (folder / "train_summary.json").write_text(json.dumps(summary, indent=1))
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
            write_model_card(folder, summary, cfg.to_dict())
            if cfg.push_to:
                url = push_checkpoint(folder, cfg.push_to)
                acc.print(f"pushed {folder} to {url}")
        acc.wait_for_everyone()
        return summary


def _flat(d: dict) -> dict:
    """Tracker-safe hyperparameters (scalars only)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in d.items()}


def pretrain(config: PretrainConfig) -> dict:
    """Run pretraining as configured (call under `accelerate launch` for several processes)."""
    return Trainer(config).run()
