"""LeMON-style meta-learning of an initialisation over PDE tasks: first-order MAML and Reptile.

A task is one PDE family with one coefficient set; its all2all pairs are split at random into a support
and a query set. Per outer step (LeMON's `full_meta_updates`, lemon_physguard notes §4):

1. for each of `tasks_per_step` tasks, adapt a functional copy of the weights with `inner_steps` plain SGD
   steps on the support set, theta' <- theta - a * clamp(grad, -c, c) (LeMON clamps at c = 1);
2. first-order MAML: the meta-gradient is grad L_query(theta') applied at theta;
   Reptile: the meta-gradient is theta - theta' (so the outer step moves theta towards theta');
3. the task-averaged meta-gradient is clipped and applied with AdamW.

With `learn_inner_lr` a small network maps the task (family and scaled coefficients) to its inner
learning rate a = max_inner_lr * sigmoid(...) (LeMONS's per-task learning rate). Its first-order
hyper-gradient is dL_query/da = -<grad L_query(theta'), sum_k clamp(g_k)>, the inner gradients held fixed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, Subset

from data_pipelines.normalization import Normalizer
from data_pipelines.semigroup import PairDataset, coefficient_vector
from finetune.trainer import TrainResult, move_batch
from foundation.pretrain.optimization import adamw


@dataclass
class MetaOptions:
    """Meta-learning hyper-parameters (LeMON defaults where they exist: 5 inner steps, clamp 1, AdamW 1e-4)."""

    algorithm: str = "fomaml"
    inner_steps: int = 5
    inner_lr: float = 1e-2
    inner_clip: float = 1.0
    outer_lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    tasks_per_step: int = 1
    support_fraction: float = 0.5
    learn_inner_lr: bool = False
    max_inner_lr: float = 0.1
    epochs: int = 10
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.algorithm not in ("fomaml", "reptile"):
            raise ValueError(f"meta: algorithm must be 'fomaml' or 'reptile', got {self.algorithm!r}")
        if self.learn_inner_lr and self.algorithm != "fomaml":
            raise ValueError(
                "meta: a learned inner learning rate needs algorithm='fomaml' (it is fit to the query loss)"
            )
        if not 0.0 < self.support_fraction < 1.0:
            raise ValueError(f"meta: support_fraction must be in (0, 1), got {self.support_fraction}")


@dataclass
class Task:
    """One family with one coefficient set: support and query example sets and its descriptor features."""

    family: str
    params: dict
    support: Dataset
    query: Dataset
    family_index: int = 0
    coefficients: torch.Tensor = field(default_factory=lambda: torch.zeros(8))


def make_tasks(
    trajectories: Sequence,
    channels: Sequence[str],
    normalizer: Normalizer | None = None,
    *,
    support_fraction: float = 0.5,
    seed: int = 0,
    families: Sequence[str] | None = None,
) -> list[Task]:
    """Groups trajectories by (family, coefficients) and splits each group's all2all pairs into support/query."""
    groups: dict[tuple, list] = {}
    for traj in trajectories:
        key = (traj.pde, tuple(sorted((k, float(v)) for k, v in traj.params.items())))
        groups.setdefault(key, []).append(traj)
    names = sorted({pde for pde, _ in groups}) if families is None else list(families)
    rng = np.random.default_rng(seed)
    tasks = []
    for (pde, params), trajs in groups.items():
        pairs = PairDataset(trajs, channels, normalizer, families=families)
        if len(pairs) < 2:
            raise ValueError(
                f"meta: task {pde} {dict(params)} has {len(pairs)} pair(s); support and query need 2"
            )
        perm = rng.permutation(len(pairs)).tolist()
        n_support = min(max(1, round(support_fraction * len(pairs))), len(pairs) - 1)
        tasks.append(
            Task(
                family=pde,
                params=dict(params),
                support=Subset(pairs, perm[:n_support]),
                query=Subset(pairs, perm[n_support:]),
                family_index=names.index(pde),
                coefficients=torch.from_numpy(coefficient_vector(pde, dict(params))),
            )
        )
    return tasks


class InnerLR(nn.Module):
    """Per-task inner learning rate from the family (embedding) and its scaled coefficients."""

    def __init__(self, num_families: int, num_coefficients: int = 8, hidden: int = 32, max_lr: float = 0.1):
        super().__init__()
        self.max_lr = max_lr
        self.family = nn.Embedding(num_families, 8)
        self.net = nn.Sequential(nn.Linear(8 + num_coefficients, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, family_index: int, coefficients: torch.Tensor) -> torch.Tensor:
        device = self.family.weight.device
        feats = torch.cat([self.family(torch.tensor(family_index, device=device)), coefficients.to(device)])
        return self.max_lr * torch.sigmoid(self.net(feats)).squeeze()


def _loss_and_grads(
    model: nn.Module, params: dict[str, torch.Tensor], data: Dataset, batch_size: int, device: str
) -> tuple[float, dict[str, torch.Tensor]]:
    """The example-weighted mean loss of `data` at weights `params` and its gradient."""
    total, count = 0.0, 0
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
        batch = move_batch(batch, device)
        n = batch["pixel_values"].shape[0]
        loss = functional_call(model, leaves, args=(), kwargs=batch, strict=False).loss
        grads_b = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads_b, strict=True):
            if g is not None:
                grads[name] += g * n
        total += float(loss.detach()) * n
        count += n
    return total / count, {n: g / count for n, g in grads.items()}


def adapt(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    support: Dataset,
    *,
    steps: int,
    lr: float,
    clip: float,
    batch_size: int,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`steps` SGD steps on the full support set from `params`; returns the adapted weights and the sum of
    the (clamped) inner gradients. The model's own parameters are not touched."""
    fast = {n: p.detach().clone() for n, p in params.items()}
    summed = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(steps):
        _, grads = _loss_and_grads(model, fast, support, batch_size, device)
        for n, g in grads.items():
            if clip and clip > 0:
                g = g.clamp(-clip, clip)
            summed[n] += g
            fast[n] = fast[n] - lr * g
    return fast, summed


def meta_gradient(
    model: nn.Module, task: Task, options: MetaOptions, lr: float
) -> tuple[dict[str, torch.Tensor], float, float]:
    """(meta-gradient per trainable parameter, query loss after adaptation, dL_query/d inner_lr)."""
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fast, summed = adapt(
        model,
        theta,
        task.support,
        steps=options.inner_steps,
        lr=lr,
        clip=options.inner_clip,
        batch_size=options.batch_size,
        device=options.device,
    )
    query_loss, query_grads = _loss_and_grads(model, fast, task.query, options.batch_size, options.device)
    hyper = -sum(float((query_grads[n] * summed[n]).sum()) for n in theta)
    if options.algorithm == "reptile":
        return {n: theta[n] - fast[n] for n in theta}, query_loss, hyper
    return query_grads, query_loss, hyper


def adapted_loss(
    model: nn.Module, tasks: Sequence[Task], options: MetaOptions, lr_net: InnerLR | None = None
) -> float:
    """Mean query loss over `tasks` after inner-loop adaptation on each task's support set."""
    losses = []
    for task in tasks:
        lr = (
            float(lr_net(task.family_index, task.coefficients).detach())
            if lr_net is not None
            else options.inner_lr
        )
        losses.append(meta_gradient(model, task, options, lr)[1])
    return float(np.mean(losses))


def meta_train(
    model: nn.Module,
    train_tasks: Sequence[Task],
    val_tasks: Sequence[Task],
    options: MetaOptions | None = None,
) -> tuple[TrainResult, InnerLR | None]:
    """Meta-trains `model` in place; keeps the weights with the best adapted validation query loss."""
    opts = options or MetaOptions()
    if not train_tasks or not val_tasks:
        raise ValueError(
            f"meta: need training and validation tasks, got {len(train_tasks)} and {len(val_tasks)}"
        )
    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    model.to(opts.device).train()
    lr_net = None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "lr": opts.outer_lr, "weight_decay": opts.weight_decay}]
    if opts.learn_inner_lr:
        num_families = 1 + max(t.family_index for t in [*train_tasks, *val_tasks])
        lr_net = InnerLR(num_families, max_lr=opts.max_inner_lr).to(opts.device)
        groups.append({"params": list(lr_net.parameters()), "lr": opts.outer_lr, "weight_decay": 0.0})
    optimizer = adamw(groups)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def snapshot():
        state = {n: p.detach().clone() for n, p in named.items()}
        return state, (None if lr_net is None else {k: v.clone() for k, v in lr_net.state_dict().items()})

    result = TrainResult()
    best = snapshot()
    result.best_val_loss = adapted_loss(model, val_tasks, opts, lr_net)
    result.history.append({"epoch": 0, "step": 0, "train_loss": math.nan, "val_loss": result.best_val_loss})
    for epoch in range(1, opts.epochs + 1):
        order = list(train_tasks)
        rng.shuffle(order)
        query_losses = []
        for start in range(0, len(order), opts.tasks_per_step):
            chunk = order[start : start + opts.tasks_per_step]
            optimizer.zero_grad(set_to_none=True)
            acc = {n: torch.zeros_like(p) for n, p in named.items()}
            for task in chunk:
                lr_t = lr_net(task.family_index, task.coefficients) if lr_net is not None else None
                lr = float(lr_t.detach()) if lr_t is not None else opts.inner_lr
                grads, q_loss, hyper = meta_gradient(model, task, opts, lr)
                for n, g in grads.items():
                    acc[n] += g / len(chunk)
                if lr_t is not None:
                    lr_t.backward(torch.tensor(hyper / len(chunk), device=lr_t.device))
                query_losses.append(q_loss)
            for n, p in named.items():
                p.grad = acc[n]
            if opts.grad_clip and opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optimizer.step()
            result.steps += 1
        val_loss = adapted_loss(model, val_tasks, opts, lr_net)
        result.history.append(
            {
                "epoch": epoch,
                "step": result.steps,
                "train_loss": float(np.mean(query_losses)),
                "val_loss": val_loss,
            }
        )
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best = snapshot()
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(best[0][n])
    if lr_net is not None:
        lr_net.load_state_dict(best[1])
    model.eval()
    return result, lr_net
