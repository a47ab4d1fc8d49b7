"""LeMON-style meta-learning of an initialisation over PDE tasks: first-order MAML and Reptile.

A task is one PDE family with one coefficient set; its all2all pairs are split at random into a support
and a query set. Per outer step (LeMON's `full_meta_updates`, Sun et al. 2025):

1. for each of `tasks_per_step` tasks, adapt a functional copy of the weights with `inner_steps` plain SGD
   steps on the support set, theta' <- theta - a * clamp(grad, -c, c) (LeMON clamps at c = 1);
2. first-order MAML: the meta-gradient is grad L_query(theta') applied at theta;
   Reptile: the meta-gradient is theta - theta' (so the outer step moves theta towards theta');
3. the task-averaged meta-gradient is clipped and applied with AdamW.

With `learn_inner_lr` a small network maps the task (family and scaled coefficients) to its inner
learning rate a = max_inner_lr * sigmoid(...) (LeMONS's per-task learning rate). Its first-order
hyper-gradient is dL_query/da = -<grad L_query(theta'), sum_k clamp(g_k)>, the inner gradients held fixed.

The outer loop is the training core's (`MetaHooks` on `finetune.trainer.train`): the training tasks are
its data (shuffled per epoch, split over ranks, resumable), `backward` writes the task-averaged
meta-gradient (all-reduced over ranks), and the core clips, steps AdamW with a cosine schedule, autocasts,
checkpoints and validates (the adapted query loss of the validation tasks) once per epoch. Epochs, the inner
batch size, seed, device, precision and clipping are the run's training settings; `tasks_per_step` is the
core's batch (a multiple of the process count). Inner updates are multi-tensor (`torch._foreach_*`), a
task's batches go to the device once, and losses, the learned inner learning rate and its hyper-gradient
stay on the device: one host read per outer step (its task indices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset, Subset, default_collate

from data_pipelines.semigroup import coefficient_vector
from finetune.methods.registry import Method, MethodContext, register_method
from finetune.trainer import FinetuneHooks, TrainConfig, TrainResult, move_batch, resolve_device, train
from foundation.training import Trainer, resolve_mixed_precision

INNER_LR_FILE = "inner_lr.safetensors"


@dataclass
class MetaOptions:
    """Meta-learning hyper-parameters (LeMON defaults where they exist: 5 inner steps, clamp 1, AdamW 1e-4)."""

    algorithm: str = field(default="fomaml", metadata={"flag": "--meta-algorithm"})
    """fomaml (first-order MAML) | reptile."""
    inner_steps: int = 5
    """Inner SGD steps per task."""
    inner_lr: float = 1e-2
    """Inner learning rate (the start value with --learn-inner-lr)."""
    inner_clip: float = 1.0
    """Inner gradients are clamped to [-c, c] (LeMON: 1; 0 disables)."""
    outer_lr: float = 1e-4
    """Outer AdamW learning rate (`--lr` sets it)."""
    weight_decay: float = 1e-4
    """Outer AdamW weight decay."""
    tasks_per_step: int = 1
    """Tasks averaged per outer step."""
    support_fraction: float = 0.5
    """Share of a task's pairs in its support set (the rest is the query set)."""
    learn_inner_lr: bool = False
    """Learn a per-task inner learning rate from the family and coefficients (LeMONS)."""
    max_inner_lr: float = 0.1
    """Upper bound of the learned inner learning rate."""

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
    pairs: Callable[[Sequence], Dataset],
    *,
    support_fraction: float = 0.5,
    seed: int = 0,
    families: Sequence[str] | None = None,
) -> list[Task]:
    """Groups trajectories by (family, coefficients) and splits each group's pairs (`pairs(group)`) into
    support and query; `families` numbers the families (default: sorted names of those present)."""
    groups: dict[tuple, list] = {}
    for traj in trajectories:
        key = (traj.pde, tuple(sorted((k, float(v)) for k, v in traj.params.items())))
        groups.setdefault(key, []).append(traj)
    names = sorted({pde for pde, _ in groups}) if families is None else list(families)
    rng = np.random.default_rng(seed)
    tasks = []
    for (pde, params), trajs in groups.items():
        examples = pairs(trajs)
        if len(examples) < 2:
            raise ValueError(
                f"meta: task {pde} {dict(params)} has {len(examples)} pair(s); support and query need 2"
            )
        perm = rng.permutation(len(examples)).tolist()
        n_support = min(max(1, round(support_fraction * len(examples))), len(examples) - 1)
        tasks.append(
            Task(
                family=pde,
                params=dict(params),
                support=Subset(examples, perm[:n_support]),
                query=Subset(examples, perm[n_support:]),
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


def device_batches(data: Dataset, batch_size: int, device: str) -> list[dict[str, torch.Tensor]]:
    """`data` collated into batches on `device`, once per task (no loader iterator, no per-step copies)."""
    return [
        move_batch(
            default_collate([data[i] for i in range(start, min(start + batch_size, len(data)))]), device
        )
        for start in range(0, len(data), batch_size)
    ]


def _loss_and_grads(
    model: nn.Module, params: dict[str, torch.Tensor], batches: Sequence[dict]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The example-weighted mean loss over `batches` at weights `params` (a device scalar) and its gradient,
    one tensor per entry of `params`."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    grads = [torch.zeros_like(p) for p in leaves.values()]
    total, count = None, 0
    for batch in batches:
        n = batch["pixel_values"].shape[0]
        loss = functional_call(model, leaves, args=(), kwargs=batch, strict=False).loss
        parts = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        used = [(g, part) for g, part in zip(grads, parts, strict=True) if part is not None]
        if used:
            torch._foreach_add_([g for g, _ in used], [part for _, part in used], alpha=n)
        total = loss.detach() * n if total is None else total + loss.detach() * n
        count += n
    torch._foreach_div_(grads, count)
    return total / count, grads


def _sgd_step(fast: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor) -> None:
    """fast <- fast - lr * grads in place (lr a number or a device scalar)."""
    if isinstance(lr, torch.Tensor):
        torch._foreach_sub_(fast, torch._foreach_mul(grads, lr))
    else:
        torch._foreach_add_(fast, grads, alpha=-lr)


def adapt(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    support: Sequence[dict],
    *,
    steps: int,
    lr: float | torch.Tensor,
    clip: float,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """`steps` SGD steps on the full support set (`device_batches`) from `params`; returns the adapted weights
    and the sum of the (clamped) inner gradients. The model's own parameters are not touched."""
    names = list(params)
    fast = [p.detach().clone() for p in params.values()]
    summed = [torch.zeros_like(p) for p in fast]
    for _ in range(steps):
        _, grads = _loss_and_grads(model, dict(zip(names, fast, strict=True)), support)
        if clip and clip > 0:
            torch._foreach_clamp_min_(grads, -clip)
            torch._foreach_clamp_max_(grads, clip)
        torch._foreach_add_(summed, grads)
        _sgd_step(fast, grads, lr)
    return dict(zip(names, fast, strict=True)), summed


def meta_gradient(
    model: nn.Module,
    task: Task,
    options: MetaOptions,
    lr: float | torch.Tensor,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(meta-gradient per trainable parameter, query loss after adaptation, dL_query/d inner_lr), the two
    numbers as device scalars: no host read."""
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fast, summed = adapt(
        model,
        theta,
        device_batches(task.support, batch_size, device),
        steps=options.inner_steps,
        lr=lr,
        clip=options.inner_clip,
    )
    query_loss, query_grads = _loss_and_grads(model, fast, device_batches(task.query, batch_size, device))
    dots = torch._foreach_mul(query_grads, summed)
    hyper = -torch.stack([d.sum() for d in dots]).sum()
    if options.algorithm == "reptile":
        moved = torch._foreach_sub(list(theta.values()), list(fast.values()))
        return dict(zip(theta, moved, strict=True)), query_loss, hyper
    return dict(zip(theta, query_grads, strict=True)), query_loss, hyper


def _inner_lr(lr_net: InnerLR | None, task: Task, options: MetaOptions) -> torch.Tensor | float:
    if lr_net is None:
        return options.inner_lr
    return lr_net(task.family_index, task.coefficients)


def adapted_loss(
    model: nn.Module,
    tasks: Sequence[Task],
    options: MetaOptions,
    lr_net: InnerLR | None = None,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> float:
    """Mean query loss over `tasks` after inner-loop adaptation on each task's support set (one host read)."""
    losses = []
    for task in tasks:
        lr = _inner_lr(lr_net, task, options)
        lr = lr.detach() if isinstance(lr, torch.Tensor) else lr
        losses.append(meta_gradient(model, task, options, lr, batch_size=batch_size, device=device)[1])
    return float(torch.stack(losses).mean())


class TaskIndex(Dataset):
    """The training tasks as the core's data: item i is task i (its index in `pixel_values`, so that the
    core's batching, shuffling, rank split and resumable position apply to tasks)."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.tensor([float(i)])}


class MetaHooks(FinetuneHooks):
    """Meta-learning on the training core: `backward` runs each task's inner loop and writes the averaged
    meta-gradient (all-reduced over ranks) into `.grad`; validation is the adapted query loss of the
    validation tasks; the learned inner learning rate (if any) is trained with the model and its weights are
    part of the hooks' checkpointed state."""

    def __init__(
        self,
        train_tasks: Sequence[Task],
        val_tasks: Sequence[Task],
        options: MetaOptions,
        cfg: TrainConfig,
        log,
        lr_net: InnerLR | None,
    ):
        super().__init__(None, cfg, 1, None, log)
        self.train_tasks, self.val_tasks, self.options, self.lr_net = train_tasks, val_tasks, options, lr_net
        self.best_lr_net = None if lr_net is None else _copy_state(lr_net)

    def validation_loss(self, trainer: Trainer) -> float:
        """The validation tasks' mean query loss after inner-loop adaptation."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        with trainer.accelerator.autocast():
            return adapted_loss(
                model,
                self.val_tasks,
                self.options,
                self.lr_net,
                batch_size=self.cfg.batch_size,
                device=str(trainer.accelerator.device),
            )

    def on_start(self, trainer: Trainer) -> None:
        self.steps_per_epoch = len(trainer.loader)  # outer steps per pass over the tasks (on this rank)
        super().on_start(trainer)

    def backward(self, trainer: Trainer, batch: dict) -> torch.Tensor:
        acc = trainer.accelerator
        model = acc.unwrap_model(trainer.model)
        tasks = [self.train_tasks[i] for i in batch["pixel_values"].view(-1).long().tolist()]  # one read
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        total = [torch.zeros_like(p) for p in named.values()]
        losses = []
        for task in tasks:
            lr_t = _inner_lr(self.lr_net, task, self.options)
            lr = lr_t.detach() if isinstance(lr_t, torch.Tensor) else lr_t
            with acc.autocast():
                grads, q_loss, hyper = meta_gradient(
                    model, task, self.options, lr, batch_size=self.cfg.batch_size, device=str(acc.device)
                )
            torch._foreach_add_(total, [grads[n] for n in named], alpha=1.0 / len(tasks))
            if isinstance(lr_t, torch.Tensor):
                lr_t.backward(hyper / len(tasks))
            losses.append(q_loss)
        if acc.num_processes > 1:
            total = [acc.reduce(g, "mean") for g in total]
            for p in self.lr_net.parameters() if self.lr_net is not None else []:
                p.grad = acc.reduce(p.grad, "mean")
        for p, g in zip(named.values(), total, strict=True):
            p.grad = g.to(p.dtype)
        return torch.stack(losses).mean()

    def _record(self, trainer: Trainer, row: dict) -> None:
        if row["val_loss"] < self.best_val and self.lr_net is not None:
            self.best_lr_net = _copy_state(self.lr_net)
        super()._record(trainer, row)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.lr_net is not None:
            state["inner_lr"] = {k: v.tolist() for k, v in self.lr_net.state_dict().items()}
            state["best_inner_lr"] = {k: v.tolist() for k, v in self.best_lr_net.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.lr_net is not None and "inner_lr" in state:
            device = self.lr_net.family.weight.device
            self.lr_net.load_state_dict(
                {k: torch.tensor(v, device=device) for k, v in state["inner_lr"].items()}
            )
            self.best_lr_net = {k: torch.tensor(v, device=device) for k, v in state["best_inner_lr"].items()}


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def meta_train(
    model: nn.Module,
    train_tasks: Sequence[Task],
    val_tasks: Sequence[Task],
    options: MetaOptions | None = None,
    config: TrainConfig | None = None,
    log=None,
) -> tuple[TrainResult, InnerLR | None]:
    """Meta-trains `model` in place on the training core (epochs over the training tasks, `tasks_per_step`
    tasks per outer AdamW step, inner batches of `config.batch_size`); keeps the weights (and inner learning
    rate) with the best adapted validation query loss."""
    opts, cfg = options or MetaOptions(), config or TrainConfig()
    if not train_tasks or not val_tasks:
        raise ValueError(
            f"meta: need training and validation tasks, got {len(train_tasks)} and {len(val_tasks)}"
        )
    if resolve_mixed_precision(cfg.mixed_precision, cfg.device) == "fp16":
        raise ValueError(
            "meta: mixed_precision fp16 needs loss scaling, which meta's inner loop has not; use bf16"
        )
    torch.manual_seed(cfg.seed)
    groups = [
        {
            "name": "meta",
            "params": [p for p in model.parameters() if p.requires_grad],
            "lr": opts.outer_lr,
            "weight_decay": opts.weight_decay,
        }
    ]
    lr_net = None
    if opts.learn_inner_lr:
        num_families = 1 + max(t.family_index for t in [*train_tasks, *val_tasks])
        lr_net = InnerLR(num_families, max_lr=opts.max_inner_lr).to(resolve_device(cfg.device))
        groups.append(
            {
                "name": "inner_lr",
                "params": list(lr_net.parameters()),
                "lr": opts.outer_lr,
                "weight_decay": 0.0,
            }
        )
    run = dataclasses.replace(cfg, batch_size=opts.tasks_per_step)
    hooks = MetaHooks(train_tasks, val_tasks, opts, cfg, log, lr_net)
    result = train(model, TaskIndex(len(train_tasks)), None, config=run, param_groups=groups, hooks=hooks)
    if lr_net is not None:
        lr_net.load_state_dict(hooks.best_lr_net)
    return result, lr_net


@register_method
class Meta(Method):
    """Meta-learned initialisation over tasks (family x coefficient set) with its own outer loop."""

    name = "meta"
    Options = MetaOptions
    summary = (
        "a meta-learned initialisation (first-order MAML or Reptile over family x coefficient tasks, LeMON), "
        "to be fine-tuned later."
    )
    lr_field = "outer_lr"
    candidate = False

    def fit(self, model: nn.Module, options: MetaOptions, context: MethodContext) -> TrainResult:
        train_cfg = context.train
        task_args = dict(
            support_fraction=options.support_fraction, seed=train_cfg.seed, families=context.families
        )
        train_tasks = make_tasks(context.train_trajectories, context.pairs, **task_args)
        val_tasks = make_tasks(context.val_trajectories, context.pairs, **task_args)
        result, lr_net = meta_train(model, train_tasks, val_tasks, options, train_cfg, context.log)
        context.state["inner_lr"] = lr_net
        return result

    def save(
        self, model: nn.Module, out: Path, options: MetaOptions, context: MethodContext
    ) -> dict[str, Path]:
        paths = super().save(model, out, options, context)
        lr_net = context.state.get("inner_lr")
        if lr_net is not None:
            paths["inner_lr"] = out / INNER_LR_FILE
            save_file(lr_net.state_dict(), str(paths["inner_lr"]), metadata={"max_lr": str(lr_net.max_lr)})
        return paths
