"""The few-shot training loop shared by every adaptation method and by eval_suite's baselines.

It trains any module with ScOT's forward signature (`forward(pixel_values, time, pixel_mask=None,
labels=None, ...) -> output with .loss`): AdamW over the given parameter groups, cosine decay, gradient
clipping, one validation pass per epoch, and the parameters of the best validation epoch restored at
the end (the starting point counts as epoch 0). A `grad_transform` hook runs after clipping and before
the optimizer step; PhysGuard projects gradients there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup

from foundation.pretrain.optimization import adamw

GradTransform = Callable[[nn.Module], None]
"""Called with the model after `backward` and clipping, before `optimizer.step()`; edits `.grad` in place."""

FORWARD_KEYS = ("pixel_values", "time", "pixel_mask", "labels", "pde_id", "coefficients")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (Poseidon's fine-tuning recipe as defaults, paper C.1)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-6
    grad_clip: float = 5.0
    warmup_steps: int = 0
    max_steps: int | None = None
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    """Validation history (one row per epoch, row 0 = before training) and the epoch that was kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    steps: int = 0

    @property
    def initial_val_loss(self) -> float:
        return self.history[0]["val_loss"]

    def to_dict(self) -> dict:
        return asdict(self)


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The forward arguments of a collated example batch, on `device`."""
    return {k: batch[k].to(device) for k in FORWARD_KEYS if k in batch}


def batch_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss on one batch (ScOT computes it inside forward from `labels`)."""
    out = model(**batch)
    loss = out.loss if hasattr(out, "loss") else out["loss"]
    if loss is None:
        raise ValueError(f"{type(model).__name__}.forward returned no loss although labels were given")
    return loss


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 8, device: str = "cpu") -> float:
    """Mean loss over `data`, batches weighted by their size; the model is left in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
        batch = move_batch(batch, device)
        n = batch["pixel_values"].shape[0]
        total += float(batch_loss(model, batch)) * n
        count += n
    if count == 0:
        raise ValueError("evaluate: the validation set is empty")
    return total / count


def default_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """One group holding every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "all", "params": params, "lr": lr, "weight_decay": weight_decay}]


def _make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW (the recipe) or plain SGD (for which PhysGuard's projection is exact in parameter space)."""
    if cfg.optimizer == "adamw":
        return adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"TrainConfig.optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


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


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig | None = None,
    param_groups: Iterable[dict] | None = None,
    grad_transform: GradTransform | None = None,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` in place and restore the parameters of the best validation epoch.

    `param_groups` are torch optimizer groups (extra keys such as "name" are kept); without them
    every trainable parameter is trained at `config.lr`. `log` receives each history row.
    """
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    model.to(cfg.device)
    groups = list(param_groups) if param_groups is not None else None
    groups = groups or default_param_groups(model, cfg.lr, cfg.weight_decay)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ValueError("train: no trainable parameters in the given parameter groups")
    if len(train_data) == 0:
        raise ValueError("train: the training set is empty")
    optimizer = _make_optimizer(cfg, groups)
    loader = DataLoader(
        train_data,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    total_steps = cfg.epochs * len(loader)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, max(total_steps, 1))
    trainable = [p for g in groups for p in g["params"] if p.requires_grad]

    result = TrainResult()
    val_loss = evaluate(model, val_data, batch_size=cfg.batch_size, device=cfg.device)
    best_state = _snapshot(model)
    result.best_val_loss = val_loss
    _record(
        result, {"epoch": 0, "step": 0, "train_loss": math.nan, "val_loss": val_loss, "seconds": 0.0}, log
    )

    for epoch in range(1, cfg.epochs + 1):
        if result.steps >= total_steps:
            break
        model.train()
        start, running, seen = time.perf_counter(), 0.0, 0
        for batch in loader:
            if result.steps >= total_steps:
                break
            batch = move_batch(batch, cfg.device)
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train: loss became {float(loss)} at step {result.steps}")
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            if grad_transform is not None:
                grad_transform(model)
            optimizer.step()
            scheduler.step()
            result.steps += 1
            n = batch["pixel_values"].shape[0]
            running += float(loss.detach()) * n
            seen += n
        val_loss = evaluate(model, val_data, batch_size=cfg.batch_size, device=cfg.device)
        row = {
            "epoch": epoch,
            "step": result.steps,
            "train_loss": running / max(seen, 1),
            "val_loss": val_loss,
            "seconds": time.perf_counter() - start,
        }
        _record(result, row, log)
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = _snapshot(model)
    _restore(model, best_state)
    model.eval()
    return result


def _record(result: TrainResult, row: dict, log: Callable[[dict], None] | None) -> None:
    result.history.append(row)
    if log is not None:
        log(row)
