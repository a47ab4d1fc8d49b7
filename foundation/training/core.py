"""The one training core: pretraining, every adaptation method, meta-learning and the eval baselines are
hooks on `Trainer`, not loops of their own.

`Trainer.fit()` runs accelerate (one CPU process to many GPUs, DDP/FSDP as launched), autocast, gradient
accumulation, clipping, a gradient-transform hook, evaluation every N steps, a `metrics.jsonl` record and
TensorBoard, and atomic, verified checkpoints with exact resume (model, optimizer, scheduler, RNG, data
position and the hooks' state). Steps never wait on the host: losses, norms and the count of skipped
non-finite steps stay on the device and are read every `log_every` steps (and at checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from data_pipelines.atomic import write_bytes_atomic
from foundation.training.args import TrainingArgs
from foundation.training.checkpoint import (
    all_finite,
    load_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
)
from foundation.training.distributed import on_main_then_share
from foundation.training.flops import flops_per_example
from foundation.training.run_folder import RunLock, prepare_run_folder

logger = logging.getLogger(__name__)

FORWARD_KEYS = ("pixel_values", "time", "pixel_mask", "labels", "pde_id", "coefficients")
METRICS_FILE = "metrics.jsonl"


class DivergenceError(RuntimeError):
    """Training produced non-finite values beyond the tolerance; the message names the step and what was kept."""


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The forward arguments of a collated batch (other keys such as "family" are bookkeeping), on `device`."""
    return {
        k: (batch[k].to(device, non_blocking=True) if device is not None else batch[k])
        for k in FORWARD_KEYS
        if k in batch
    }


class TrainHooks:
    """What a run plugs into the core; the defaults train `model(**batch).loss`."""

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        out = model(**batch)
        return out.loss if hasattr(out, "loss") else out["loss"]

    def backward(self, trainer: Trainer, batch: dict) -> torch.Tensor:
        """Compute this micro-batch's gradients into `.grad`; return its (detached or not) loss.
        Meta-learning replaces this with its inner loop."""
        with trainer.accelerator.autocast():
            loss = self.loss(trainer.model, batch)
        trainer.accelerator.backward(loss)
        return loss

    def transform_gradients(self, model: torch.nn.Module) -> None:
        """Edit `.grad` in place after clipping, before the optimizer step (PhysGuard projects here)."""

    def on_start(self, trainer: Trainer) -> None:
        """Called once the run folder is open (after a resume), before the first step."""

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Metrics at an evaluation step (already reduced over ranks), logged as they are named."""
        return {}

    def state_dict(self) -> dict:
        """JSON-safe state saved in every checkpoint (e.g. the best validation loss so far)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned, on resume."""


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    epoch: int = 0
    examples: int = 0
    flops: float = 0.0
    flops_per_example: float | None = None
    elapsed_s: float = 0.0
    bad_steps: int = 0
    first_bad_step: int | None = None
    family_counts: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    """The logged rows (step, train/loss, eval metrics, ...), also appended to metrics.jsonl."""


class Trainer:
    """One training run of `model` on `loader` under `accelerator` (see the module docstring).

    `loader` yields this rank's batches (dicts of tensors, optionally a "family" list) and may be a torchdata
    `StatefulDataLoader` (then the position is checkpointed); epochs restart it, calling `set_epoch` on its
    dataset or batch sampler. `args.max_steps` must be set.
    """

    def __init__(
        self,
        args: TrainingArgs,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        loader,
        hooks: TrainHooks | None = None,
        *,
        eval_every: int | None = None,
        max_minutes: float | None = None,
        count_flops: bool = False,
        run_config: dict | None = None,
        project_name: str = "pdefm",
    ):
        if args.max_steps is None:
            raise ValueError("Trainer: args.max_steps must be set")
        self.args, self.accelerator, self.loader = args, accelerator, loader
        self.hooks = hooks or TrainHooks()
        self.eval_every, self.max_minutes, self.count_flops = eval_every, max_minutes, count_flops
        self.run_config, self.project_name = run_config or {}, project_name
        self.out = Path(args.out) if args.out else None
        if args.gradient_checkpointing:
            if not hasattr(model, "activation_checkpointing_enable"):
                raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
            model.activation_checkpointing_enable()
        if args.compile == "blocks":
            if not hasattr(model, "compile_blocks"):
                raise ValueError(f"compile=blocks: {type(model).__name__} has no compile_blocks()")
            model.compile_blocks()
        elif args.compile == "model":  # in place: state-dict keys and checkpoints stay those of the model
            model.compile(dynamic=None)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = TrainState()
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        # fused AdamW skips a step on device when told `found_inf`; other optimizers need a host check
        self._device_skip = bool(inner.defaults.get("fused")) and accelerator.scaler is None
        self._inner_optimizer = inner
        self.row: dict = {}
        """The row being logged at this step (train/loss, wall_s, ...), readable by `hooks.evaluate`."""
        self._reset_window()

    # ---- run folder, resume ------------------------------------------------------------------------

    def _open_run(self, stack: contextlib.ExitStack) -> None:
        """Lock the folder, apply the resume/overwrite rules and restore the newest valid checkpoint."""
        acc, args = self.accelerator, self.args

        def check() -> tuple[str, dict] | None:
            stack.enter_context(RunLock(self.out))
            prepare_run_folder(self.out, args.resume, args.overwrite)
            found = newest_valid_checkpoint(self.out) if args.resume != "never" else None
            return (str(found[0]), found[1]) if found else None

        found = on_main_then_share(acc, check)
        metrics = self.out / METRICS_FILE
        if found is None:
            if acc.is_main_process:
                metrics.unlink(missing_ok=True)
            return
        folder, saved = Path(found[0]), found[1]
        loader_state = load_checkpoint(acc, folder, saved)
        if loader_state is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(loader_state)
        self.hooks.load_state_dict(saved.pop("hooks", {}))
        saved.pop("world_size", None)
        self.state = TrainState(**saved)
        if acc.is_main_process and metrics.exists():  # records after the checkpoint are redone: drop them
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            kept = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= self.state.step)
            write_bytes_atomic(metrics, kept.encode())
        acc.print(f"resumed from {folder} at step {self.state.step}")

    # ---- data ---------------------------------------------------------------------------------------

    def _set_epoch(self, epoch: int) -> None:
        for owner in (getattr(self.loader, "dataset", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)

    def batches(self) -> Iterator[dict]:
        """Endless batches on the device; an exhausted loader starts the next epoch."""
        device = self.accelerator.device
        resumed = self.state.step > 0
        while True:
            self._set_epoch(self.state.epoch)
            seen = 0
            for batch in self.loader:
                seen += 1
                families = batch.get("family")
                if families is not None:
                    self._families.update(families)
                yield model_inputs(batch, device)
            if seen == 0 and not resumed:
                raise RuntimeError(
                    f"rank {self.accelerator.process_index}: the training data yielded no batch"
                )
            resumed = False
            self.state.epoch += 1

    # ---- one step -----------------------------------------------------------------------------------

    def _reset_window(self) -> None:
        device = self.accelerator.device
        self._loss_sum = torch.zeros((), device=device)
        self._micro = 0
        self._norm = torch.zeros((), device=device)
        self._bad = torch.zeros((), device=device)
        self._first_bad = torch.full((), -1.0, device=device)
        self._families: Counter = Counter()

    def train_step(self, data: Iterator[dict]) -> None:
        """One optimizer step over `grad_accum` micro-batches, without reading anything on the host."""
        acc, args = self.accelerator, self.args
        for _ in range(args.grad_accum):
            batch = next(data)
            if self.count_flops and self.state.flops_per_example is None:
                self.state.flops_per_example = flops_per_example(acc.unwrap_model(self.model), batch)
            with acc.accumulate(self.model):
                loss = self.hooks.backward(self, batch)
                self._loss_sum += loss.detach().float()
                self._micro += 1
                if acc.sync_gradients:
                    self._clip_transform_step()
                self.optimizer.zero_grad(set_to_none=True)
            n = batch["pixel_values"].shape[0] * acc.num_processes
            self.state.examples += n
            self.state.flops += (self.state.flops_per_example or 0.0) * n

    def _clip_transform_step(self) -> None:
        acc = self.accelerator
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, max_norm)
        norm = norm.float() if torch.is_tensor(norm) else torch.tensor(float(norm), device=acc.device)
        bad = ~torch.isfinite(norm)
        step = self.state.step + 1
        self._first_bad = torch.where(bad & (self._first_bad < 0), float(step), self._first_bad)
        self._bad += bad.float()
        self._norm = torch.where(bad, self._norm, norm)
        self.hooks.transform_gradients(self.model)
        if self._device_skip:
            self._inner_optimizer.found_inf = bad.float()
            self.optimizer.step()
            del self._inner_optimizer.found_inf
        elif not bool(bad):  # host check: optimizers without an on-device skip
            self.optimizer.step()
        self.scheduler.step()

    # ---- logging and checks -------------------------------------------------------------------------

    def _read_window(self) -> dict:
        """Reduce and read the device accumulators (the one host sync of a logging step)."""
        acc = self.accelerator
        loss = self._loss_sum / max(self._micro, 1)
        values = torch.stack([loss, self._norm, self._bad, self._first_bad])
        values = acc.reduce(values, "mean").tolist()
        families = self._families
        self._reset_window()
        for name, n in families.items():
            self.state.family_counts[name] = self.state.family_counts.get(name, 0) + n
        return {
            "loss": values[0],
            "grad_norm": values[1],
            "bad": int(round(values[2])),
            "first_bad": values[3],
        }

    def _log(self, row: dict) -> None:
        self.state.history.append(row)
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.out is not None and self.accelerator.is_main_process:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _check_bad(self, window: dict) -> None:
        if window["bad"] == 0:
            return
        self.state.bad_steps += window["bad"]
        if self.state.first_bad_step is None:
            self.state.first_bad_step = int(window["first_bad"])
        first = self.state.first_bad_step
        self.accelerator.print(
            f"warning: skipped {window['bad']} step(s) with a non-finite gradient norm "
            f"(at step {int(window['first_bad'])} and after)"
        )
        if self.state.bad_steps > self.args.max_bad_steps:
            kept = f"; the last good checkpoint in {self.out / 'checkpoints'} is kept" if self.out else ""
            raise DivergenceError(
                f"training diverged: {self.state.bad_steps} steps with a non-finite loss or gradient norm, "
                f"more than --max-bad-steps {self.args.max_bad_steps} (first at step {first}){kept}; "
                "lower the learning rate or raise --warmup-steps"
            )

    def _over_time(self, started: float) -> bool:
        """Every rank stops together once rank 0's wall clock passes max_minutes."""
        if self.max_minutes is None:
            return False
        over = self.state.elapsed_s + time.monotonic() - started > 60 * self.max_minutes
        flag = torch.tensor(float(over and self.accelerator.is_main_process), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    def checkpoint(self) -> None:
        """Write a checkpoint; refused (DivergenceError) when any weight is non-finite."""
        if not all_finite(self.accelerator, self.model):
            raise DivergenceError(
                f"non-finite weights at step {self.state.step}: no checkpoint written; the last good one in "
                f"{self.out / 'checkpoints'} is kept"
            )
        trainer_state = {**asdict(self.state), "hooks": self.hooks.state_dict()}
        loader_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None
        save_checkpoint(
            self.accelerator,
            self.out,
            self.state.step,
            trainer_state,
            loader_state,
            self.args.keep_checkpoints,
        )

    # ---- the run ------------------------------------------------------------------------------------

    def fit(self) -> TrainState:
        """Train to `max_steps` (or `max_minutes`), checkpointing and evaluating as configured."""
        with contextlib.ExitStack() as stack:
            if self.out is not None:
                self._open_run(stack)
                if self.accelerator.trackers == [] and self.args.log_with != "none":
                    self.accelerator.init_trackers(self.project_name, config=_flat(self.run_config))
            self.hooks.on_start(self)
            return self._loop()

    def _loop(self) -> TrainState:
        acc, args, state = self.accelerator, self.args, self.state
        bar = tqdm(
            total=args.max_steps,
            initial=state.step,
            desc=self.project_name,
            disable=not (args.progress and acc.is_local_main_process),
        )
        data = self.batches()
        started = time.monotonic()
        self.model.train()
        while state.step < args.max_steps:
            self.train_step(data)
            state.step += 1
            bar.update(1)
            last = state.step == args.max_steps
            checkpoint = self.out is not None and (
                last or (args.checkpoint_every is not None and state.step % args.checkpoint_every == 0)
            )
            evaluate = self.eval_every is not None and (state.step % self.eval_every == 0 or last)
            stop = (state.step % args.log_every == 0 or checkpoint) and self._over_time(started)
            window = {"bad": 0}
            if state.step % args.log_every == 0 or last or checkpoint or evaluate or stop:
                window = self._read_window()
                self._check_bad(window)
                row = {
                    "step": state.step,
                    "train/loss": window["loss"],
                    "train/grad_norm": window["grad_norm"],
                    "train/lr": self.scheduler.get_last_lr()[0],
                    "epoch": state.epoch,
                    "examples": state.examples,
                    "flops": state.flops,
                    "wall_s": state.elapsed_s + time.monotonic() - started,
                }
                if evaluate:
                    self.row = row  # the hooks may read the step's training figures
                    row.update(self.hooks.evaluate(self))
                    self.model.train()
                self._log(row)
                bar.set_postfix(loss=f"{window['loss']:.4g}")
            if (checkpoint or stop) and self.out is not None:
                state.elapsed_s += time.monotonic() - started
                started = time.monotonic()
                if window["bad"] and not last:  # weights right after skipped steps are suspect: wait
                    acc.print(f"warning: no checkpoint at step {state.step}: it followed skipped steps")
                else:
                    self.checkpoint()
            if stop:
                acc.print(f"stopping at step {state.step}: {self.max_minutes} minutes reached")
                break
        bar.close()
        state.elapsed_s += time.monotonic() - started
        return state

    # ---- evaluation and export ----------------------------------------------------------------------

    @torch.no_grad()
    def mean_loss(self, data, batch_size: int) -> float:
        """Example-weighted mean loss over `data`, each rank scoring every world_size-th example (one sync)."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)  # no collectives: ranks may score different batch counts
        model.eval()
        subset = torch.utils.data.Subset(data, range(acc.process_index, len(data), acc.num_processes))
        total = torch.zeros(2, device=acc.device)
        for batch in torch.utils.data.DataLoader(subset, batch_size=batch_size):
            batch = model_inputs(batch, acc.device)
            with acc.autocast():
                loss = self.hooks.loss(model, batch)
            n = batch["pixel_values"].shape[0]
            total += torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=acc.device)])
        total = acc.reduce(total, "sum")
        if float(total[1]) == 0:
            raise ValueError("evaluation: the validation set is empty")
        return float(total[0] / total[1])

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full model state dict (gathered under FSDP; every rank must call), after a finiteness check."""
        if not all_finite(self.accelerator, self.model):
            raise DivergenceError(f"non-finite weights at step {self.state.step}: the model is not exported")
        return self.accelerator.get_state_dict(self.model)


def _flat(d: dict) -> dict:
    """Tracker-safe hyperparameters (scalars only)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in d.items()}
