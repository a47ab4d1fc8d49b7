"""Candidates of a study, each trained on the same few shots with the same budget by the finetune loop.

A method adapts a pretrained checkpoint: every registered adaptation method that trains on the shots
(`finetune.methods.registry`: "full", "lora", "physguard" and any plugin); a baseline ("fno", "unet",
"scot_scratch") starts from a seeded random initialisation. All use one step budget,
one batch size, the same all2all pairs and the same normalisation (fitted on the training shots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from eval_suite.baselines.registry import build_baseline, list_baselines
from eval_suite.protocol import TrainedOperator, loss_slices
from finetune.channels import load_for_fields
from finetune.data import pair_dataset
from finetune.methods import physguard
from finetune.methods.registry import MethodContext, get_method, method_names
from finetune.trainer import TrainConfig, TrainResult, resolve_device, train
from foundation.conditioning import extend_vocabulary
from foundation.configuration_scot import ScOTConfig


def study_methods() -> list[str]:
    """Registered adaptation methods that train on the shots (meta-learning, which only meta-trains, is not)."""
    return [m for m in method_names() if get_method(m).candidate]


METHODS = tuple(study_methods())
SCRATCH = "scot_scratch"
ARCHITECTURE = (
    "image_size", "patch_size", "embed_dim", "depths", "num_heads", "skip_connections", "window_size",
    "mlp_ratio", "qkv_bias", "p", "residual_model", "use_conditioning", "learn_residual",
)  # fmt: skip
"""ScOTConfig fields that define a checkpoint's architecture (not its channels or initialisation)."""


@dataclass
class Budget:
    """What every candidate gets: epochs (capped by max_steps), batch size, baseline learning rate, pairs."""

    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 5e-4
    stride: int = 1
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda; mixed precision follows the training core's "auto"."""

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            max_steps=self.max_steps,
            seed=seed,
            device=self.device,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def check_candidates(names: Sequence[str], model: str | None) -> None:
    """Known names only, and a checkpoint wherever a method needs one."""
    methods = study_methods()
    unknown = [n for n in names if n not in (*methods, *list_baselines())]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; methods: {methods}, baselines: {list_baselines()}")
    if model is None and any(n in methods for n in names):
        raise ValueError(
            f"methods {[n for n in names if n in methods]} adapt a pretrained checkpoint: pass --model"
        )


def pretrained_operator(model: str, fields: Sequence[str], normalizer: Normalizer | None) -> TrainedOperator:
    """The checkpoint as it is (zero-shot): the data's fields must fit its channel layout."""
    net, layout = load_for_fields(model, fields, allow_surgery=False)
    return TrainedOperator(net, tuple(layout), normalizer)


def scratch_options(model: str) -> dict:
    """Options that make "scot_scratch" the checkpoint's own architecture from random weights (Poseidon's scOT
    row): pretrained against scratch then compares weights, not sizes."""
    config = ScOTConfig.from_pretrained(model)
    return {k: getattr(config, k) for k in ARCHITECTURE if hasattr(config, k)}


def physguard_bases(
    model: str,
    fields: Sequence[str],
    sim_trajs: Sequence[Trajectory],
    options: physguard.PhysGuardOptions | None = None,
) -> dict[str, torch.Tensor]:
    """PhysGuard's protected bases of the checkpoint, from per-sample gradients on its simulation data.

    Computed once per study: they depend on the checkpoint and the simulation data, not on the shots.
    The simulation pairs are normalised with their own statistics, as in pretraining.
    """
    net, layout = load_for_fields(model, fields, channels="same")  # PhysGuard keeps the checkpoint's channels
    sim = pair_dataset(sim_trajs, layout, Normalizer.from_trajectories(sim_trajs))
    return physguard.compute_bases(net, sim, options)


def fit_candidate(
    name: str,
    train_trajs: Sequence[Trajectory],
    val_trajs: Sequence[Trajectory],
    *,
    budget: Budget,
    seed: int,
    model: str | None = None,
    options: Any = None,
    state: dict | None = None,
    bases: dict[str, torch.Tensor] | None = None,
    alpha: float | None = None,
    lr_scale: float = 1.0,
    channels: str = "auto",
    **baseline_options,
) -> tuple[TrainedOperator, TrainResult]:
    """Build candidate `name`, train it on the all2all pairs of `train_trajs` and keep its best validation epoch.

    A method is prepared by the registry with `options` (its options dataclass, default its defaults) and
    `state` (what it computed once per study); `bases` (from `physguard_bases`) and `alpha` are PhysGuard's
    protected directions and strength, for methods with PhysGuard's options. `lr_scale` multiplies the
    candidate's learning rates (a method's group rates, a baseline's `budget.lr`), the knob a learning-rate
    search turns; `channels` is how a method maps the fields onto the checkpoint ("auto", "same" or
    "fresh", `finetune.channels`); `baseline_options` size a baseline (e.g. `modes`, `width`); seeded, so a
    run is reproducible.
    """
    if not lr_scale > 0:
        raise ValueError(f"candidate {name!r}: lr_scale must be positive, got {lr_scale}")
    check_candidates([name], model)
    torch.manual_seed(seed)  # channel surgery and adapters initialise from the global generator
    fields = list(train_trajs[0].fields)
    normalizer = Normalizer.from_trajectories(train_trajs)
    config = budget.train_config(seed)
    groups, transform, families = None, None, None
    if name in study_methods():
        spec = get_method(name)
        opts = options if options is not None else spec.Options()
        if isinstance(opts, physguard.PhysGuardOptions) and alpha is not None:
            opts = replace(opts, alpha=alpha)
        pdes = [t.pde for t in [*train_trajs, *val_trajs]]
        net, layout = load_for_fields(model, fields, channels=spec.channel_mode(channels), families=pdes)
        families = extend_vocabulary(net, pdes)
        context = MethodContext(
            pairs=lambda trajs: pair_dataset(
                trajs, layout, normalizer, stride=budget.stride, families=families
            ),
            train=config,
            device=resolve_device(config.device),
            train_trajectories=list(train_trajs),
            val_trajectories=list(val_trajs),
            channels=list(layout),
            families=families,
            state={**(state or {}), **({"bases": bases} if bases is not None else {})},
        )
        net, groups = spec.prepare(net, opts, context)
        for group in groups:
            group["lr"] = group.get("lr", config.lr) * lr_scale
        transform = spec.gradient_transform(net, opts, context)
    else:
        budget = replace(budget, lr=budget.lr * lr_scale)
        config = budget.train_config(seed)
        layout = fields
        net = build_baseline(
            name, len(layout), channel_slices=loss_slices(layout), seed=seed, **baseline_options
        )
    train_set = pair_dataset(train_trajs, layout, normalizer, stride=budget.stride, families=families)
    val_set = pair_dataset(val_trajs, layout, normalizer, stride=budget.stride, families=families)
    result = train(
        net,
        train_set,
        val_set,
        config=config,
        param_groups=groups,
        grad_transform=transform,
    )
    return TrainedOperator(net, tuple(layout), normalizer), result
