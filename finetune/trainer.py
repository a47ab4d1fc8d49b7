"""Few-shot training on the training core, shared by every adaptation method and eval_suite's baselines.

It trains any module with ScOT's forward signature (`forward(pixel_values, time, pixel_mask=None,
labels=None, ...) -> output with .loss`) through `foundation.training.Trainer`: accelerate (one process or
`accelerate launch`, the global batch split over ranks), autocast, AdamW over the given parameter groups,
cosine decay, clipping, one validation pass per epoch, checkpoints and exact resume when `out` is set, and
the parameters of the best validation epoch restored at the end (the starting point counts as epoch 0).
A `grad_transform` runs after clipping and before the optimizer step (PhysGuard projects gradients there).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data_pipelines.atomic import write_bytes_atomic
from foundation.pretrain.optimization import adamw
from foundation.training import Trainer, TrainHooks, TrainingArgs, make_accelerator, map_loader
from foundation.training.core import FORWARD_KEYS

GradTransform = Callable[[nn.Module], None]
"""Called with the model after `backward` and clipping, before `optimizer.step()`; edits `.grad` in place."""

BEST_FILE = "best.safetensors"


@dataclass(kw_only=True)
class TrainConfig(TrainingArgs):
    """Hyper-parameters of one fine-tuning run (Poseidon's fine-tuning recipe as defaults, paper C.1)."""

    epochs: int = 20
    """Passes over the training pairs (the step count is capped by --max-steps)."""
    lr: float = 5e-4
    """Learning rate of parameters without a method-specific rate."""
    weight_decay: float = 1e-6
    """AdamW weight decay of parameters without a method-specific one."""
    warmup_steps: int | None = None
    """Linear warm-up before the cosine decay (default: a tenth of the run's steps, which protects the
    pretrained weights from the first large updates through new layers; docs/transfer.md)."""
    optimizer: str = "adamw"
    """adamw (the recipe) | sgd (for which PhysGuard's projection is exact in parameter space)."""

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"TrainConfig.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


@dataclass
class TrainResult:
    """Validation history (one row per epoch, row 0 = before training) and the epoch that was kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    steps: int = 0
    world_size: int = 1
    mixed_precision: str = "no"

    @property
    def initial_val_loss(self) -> float:
        return self.history[0]["val_loss"]

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> str:
    """ "auto": CUDA when present, else CPU."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The forward arguments of a collated example batch, on `device`."""
    return {k: batch[k].to(resolve_device(str(device))) for k in FORWARD_KEYS if k in batch}


def batch_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss on one batch (ScOT computes it inside forward from `labels`)."""
    out = model(**batch)
    loss = out.loss if hasattr(out, "loss") else out["loss"]
    if loss is None:
        raise ValueError(f"{type(model).__name__}.forward returned no loss although labels were given")
    return loss


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 8, device: str = "auto") -> float:
    """Mean loss over `data` in this process, batches weighted by their size; the model is left in eval mode."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
        batch = move_batch(batch, device)
        n = batch["pixel_values"].shape[0]
        total += batch_loss(model, batch).detach().double().cpu() * n
        count += n
    if count == 0:
        raise ValueError("evaluate: the validation set is empty")
    return float(total) / count


def default_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """One group holding every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "all", "params": params, "lr": lr, "weight_decay": weight_decay}]


def _group_multiplier(step: int, *, start: int, warmup: int, total: int) -> float:
    """One group's learning-rate factor: 0 before `start`, then a linear warm-up over `warmup` steps and a
    cosine decay to 0 at `total` (transformers' cosine-with-warm-up schedule when `start` is 0)."""
    step -= start
    if step < 0:
        return 0.0
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - start - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def group_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up and cosine decay per parameter group; a group with `"frozen_fraction": f` stays at rate 0 for
    the first `f` of the steps and then warms up (linear probing before fine-tuning, LP-FT)."""
    lambdas = []
    for group in optimizer.param_groups:
        frozen = float(group.get("frozen_fraction", 0.0))
        if not 0.0 <= frozen < 1.0:
            raise ValueError(
                f"parameter group {group.get('name', '?')!r}: frozen_fraction must be in [0, 1), got {frozen}"
            )
        start = round(frozen * total)
        lambdas.append(
            functools.partial(_group_multiplier, start=start, warmup=min(warmup, total - start), total=total)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: trainable parameters and buffers (e.g. BatchNorm statistics)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


class FinetuneHooks(TrainHooks):
    """Validation once per epoch; the best epoch's weights kept (in memory, and in `out/best.safetensors`
    when the run has a folder, so a resumed run restores the same best epoch)."""

    def __init__(self, val_data, cfg: TrainConfig, steps_per_epoch: int, grad_transform, log):
        self.val_data, self.cfg, self.steps_per_epoch = val_data, cfg, steps_per_epoch
        self.grad_transform, self.log = grad_transform, log
        self.history: list[dict] = []
        self.best_val, self.best_epoch = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._last_seconds = 0.0

    def transform_gradients(self, model: nn.Module) -> None:
        if self.grad_transform is not None:
            self.grad_transform(model)

    def on_start(self, trainer: Trainer) -> None:
        if self.history:  # resumed: the best weights so far are on disk
            best = Path(self.cfg.out) / BEST_FILE
            self.best_state = {k: v.to(trainer.accelerator.device) for k, v in load_file(best).items()}
            return
        val = self.validation_loss(trainer)
        self._record(
            trainer, {"epoch": 0, "step": 0, "train_loss": math.nan, "val_loss": val, "seconds": 0.0}
        )

    def validation_loss(self, trainer: Trainer) -> float:
        """What the best epoch is chosen by; meta-learning overrides it with the loss after adaptation."""
        return trainer.mean_loss(self.val_data, self.cfg.batch_size)

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        val = self.validation_loss(trainer)
        row = {
            "epoch": math.ceil(trainer.state.step / self.steps_per_epoch),
            "step": trainer.state.step,
            "train_loss": trainer.row["train/loss"],
            "val_loss": val,
            "seconds": trainer.row["wall_s"] - self._last_seconds,
        }
        self._last_seconds = trainer.row["wall_s"]
        self._record(trainer, row)
        return {"val/loss": val}

    def _record(self, trainer: Trainer, row: dict) -> None:
        self.history.append(row)
        if row["val_loss"] < self.best_val:
            self.best_val, self.best_epoch = row["val_loss"], row["epoch"]
            model = trainer.accelerator.unwrap_model(trainer.model)
            self.best_state = _snapshot(model)
            if self.cfg.out and trainer.accelerator.is_main_process:
                _save_atomic(self.best_state, Path(self.cfg.out) / BEST_FILE)
        if self.log is not None:
            self.log(row)

    def state_dict(self) -> dict:
        return {"history": self.history, "best_val": self.best_val, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.history = state.get("history", [])
        self.best_val = state.get("best_val", math.inf)
        self.best_epoch = state.get("best_epoch", 0)


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    write_bytes_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in state.items()}))


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig | None = None,
    param_groups: Iterable[dict] | None = None,
    grad_transform: GradTransform | None = None,
    hooks: FinetuneHooks | None = None,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` in place and restore the parameters of the best validation epoch.

    `param_groups` are torch optimizer groups (extra keys such as "name" are kept); without them every
    trainable parameter is trained at `config.lr`. `log` receives each history row. `hooks` replaces the
    default `FinetuneHooks` (meta-learning subclasses it to run its inner loop in `backward`).
    """
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    groups = list(param_groups) if param_groups is not None else None
    groups = groups or default_param_groups(model, cfg.lr, cfg.weight_decay)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ValueError("train: no trainable parameters in the given parameter groups")
    if len(train_data) == 0:
        raise ValueError("train: the training set is empty")
    acc = make_accelerator(cfg, project_dir=cfg.out)
    loader = map_loader(
        train_data,
        cfg.batch_size,
        rank=acc.process_index,
        world_size=acc.num_processes,
        seed=cfg.seed,
        pin_memory=acc.device.type == "cuda",
        drop_last=True if cfg.compile != "none" else None,  # compiled: one batch shape, no recompiles
    )
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    run_cfg = dataclasses.replace(cfg, max_steps=total_steps, log_every=steps_per_epoch)
    optimizer = _make_optimizer(cfg, groups)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else total_steps // 10
    scheduler = group_schedule(optimizer, warmup, max(total_steps, 1))
    hooks = hooks or FinetuneHooks(val_data, cfg, steps_per_epoch, grad_transform, log)
    trainer = Trainer(
        run_cfg,
        acc,
        model,
        optimizer,
        scheduler,
        loader,
        hooks,
        eval_every=steps_per_epoch,
        run_config=cfg.to_dict(),
        project_name="pdefm-finetune",
    )
    state = trainer.fit()
    # the plain module, without accelerate's autocast forward: the trained model predicts in fp32 as saved
    unwrapped = acc.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if hooks.best_state is not None:
        _restore(unwrapped, hooks.best_state)
    unwrapped.eval()
    return TrainResult(
        history=hooks.history,
        best_epoch=hooks.best_epoch,
        best_val_loss=hooks.best_val,
        steps=state.step,
        world_size=acc.num_processes,
        mixed_precision=acc.mixed_precision,
    )
