"""Downstream tasks scored while a model pretrains (`pdefm pretrain --downstream SPEC`) and across runs.

A spec is whitespace-separated: a source, then modes and options::

    burgers                                  # a built-in family, zero-shot, 8 generated trajectories
    "burgers:nu=0.002:0.01 few-shot:4 zero-shot input=2 target=6"
    "heldout/ zero-shot lead=0.3 n=16"       # a corpus folder (or a data file, or a Hub dataset id)

The source is a corpus folder or data file when that path exists, else a built-in family spec
``name[:coef=lo:hi,...]`` (its coefficient ranges replaced, e.g. outside the pretraining ranges), else a Hub
dataset id. Modes: ``zero-shot`` (the model as it is; the default) and ``few-shot:N`` (N trajectories).
Options: ``input=I``, ``target=J`` or ``lead=F`` (fraction of the span) choose the horizon, ``n=`` the
number of evaluation trajectories, ``resolution=``, ``snapshots=`` and ``seed=`` of generated ones,
``steps=`` and ``lr=`` the few-shot budget, ``name=`` the task's name. Each (spec, mode) is a task whose metrics are
logged as ``downstream/<name>.<mode>/<metric>``, with persistence (the input as the prediction) beside.

This module is in the foundation layer: relative L1 is computed here in torch, grouped as
`eval_suite.metrics` groups it (vector fields u, v, w and complex re, im scored jointly, then the mean over
groups), so the numbers logged during pretraining are those the evaluation studies report.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_pipelines.channels import ChannelMap
from data_pipelines.normalization import Normalizer
from data_pipelines.semigroup import PairDataset
from data_pipelines.trajectory import Trajectory

MODES = ("zero-shot", "few-shot")
VECTOR_FIELDS = (("u", "v", "w"), ("re", "im"))
PREFIX = "downstream"


class DownstreamSpecError(ValueError):
    """A `--downstream` spec that cannot be parsed; the message names the token and what was expected."""


@dataclass(frozen=True)
class DownstreamSpec:
    """One parsed `--downstream` spec: where its trajectories come from, its modes and its horizon."""

    source: str
    kind: str
    """"family", "path" (a corpus folder or data file) or "hub" (a Hub dataset id)."""
    modes: tuple[str, ...] = ("zero-shot",)
    """"zero-shot" and/or "few-shot:N"."""
    name: str = ""
    input_index: int = 0
    target_index: int | None = None
    lead_time: float | None = None
    trajectories: int = 8
    resolution: int | None = None
    """Of generated trajectories (default: the model's image size)."""
    snapshots: int = 11
    seed: int = 1234
    steps: int = 50
    """Optimizer steps of each few-shot fine-tuning."""
    lr: float = 1e-4
    """Learning rate of each few-shot fine-tuning (AdamW, constant)."""
    coefficient_ranges: dict = field(default_factory=dict)

    def task(self, mode: str) -> str:
        """The task's name in metric keys: ``<name>.zero-shot`` or ``<name>.few-shot-N``."""
        return f"{self.name}.{mode.replace(':', '-')}"

    def tasks(self) -> list[str]:
        return [self.task(mode) for mode in self.modes]

    def shots(self, mode: str) -> int:
        """N of a ``few-shot:N`` mode (0 for zero-shot)."""
        return int(mode.partition(":")[2]) if mode.startswith("few-shot") else 0


def metric_key(task: str, metric: str) -> str:
    return f"{PREFIX}/{task}/{metric}"


def parse_downstream(spec: str) -> DownstreamSpec:
    """A `DownstreamSpec` from its text (see the module docstring); raises DownstreamSpecError."""
    tokens = spec.split()
    if not tokens:
        raise DownstreamSpecError(
            "--downstream: empty spec; expected SOURCE [zero-shot] [few-shot:N] [key=value]"
        )
    source, modes, options = tokens[0], [], {}
    for token in tokens[1:]:
        if token == "zero-shot" or token.startswith("few-shot:"):
            if token != "zero-shot":
                n = token.partition(":")[2]
                if not n.isdigit() or int(n) < 1:
                    raise DownstreamSpecError(
                        f"--downstream {spec!r}: expected few-shot:N with N >= 1, got {token!r}"
                    )
            modes.append(token)
        elif "=" in token:
            key, _, value = token.partition("=")
            options[key] = value
        else:
            raise DownstreamSpecError(
                f"--downstream {spec!r}: expected zero-shot, few-shot:N or key=value after the source, got {token!r}"
            )
    kind, base, ranges = _source_kind(source, spec)
    ints = {"input": "input_index", "target": "target_index", "n": "trajectories", "resolution": "resolution"}
    ints |= {"snapshots": "snapshots", "seed": "seed", "steps": "steps"}
    values: dict = {}
    for key, value in options.items():
        try:
            if key in ints:
                values[ints[key]] = int(value)
            elif key in ("lead", "lr"):
                values["lead_time" if key == "lead" else "lr"] = float(value)
            elif key == "name":
                if not value or "/" in value:
                    raise ValueError
                values["name"] = value
            else:
                raise DownstreamSpecError(
                    f"--downstream {spec!r}: unknown option {key!r}; known: {sorted([*ints, 'lead', 'lr', 'name'])}"
                )
        except ValueError as err:
            if isinstance(err, DownstreamSpecError):
                raise
            raise DownstreamSpecError(f"--downstream {spec!r}: bad value for {key}: {value!r}") from None
    if "target_index" in values and "lead_time" in values:
        raise DownstreamSpecError(f"--downstream {spec!r}: give target= or lead=, not both")
    name = values.pop("name", None) or (
        Path(base.rstrip("/")).stem if kind == "path" else base.split("/")[-1]
    )
    return DownstreamSpec(
        source=source,
        kind=kind,
        modes=tuple(dict.fromkeys(modes)) or ("zero-shot",),
        name=name,
        coefficient_ranges=ranges,
        **values,
    )


def _source_kind(source: str, spec: str) -> tuple[str, str, dict]:
    """("path" | "family" | "hub", the base name, coefficient ranges of a family)."""
    if Path(source).exists():
        return "path", source, {}
    from data_pipelines.solvers.registry import list_families

    name, _, ranges = source.partition(":")
    if name in list_families():
        return "family", name, parse_ranges(name, ranges, spec)
    if "/" in source:
        return "hub", source, {}
    raise DownstreamSpecError(
        f"--downstream {spec!r}: {source!r} is no existing path, built-in family ({', '.join(list_families())}) "
        "or Hub dataset id (org/name)"
    )


def parse_ranges(name: str, text: str, spec: str) -> dict[str, tuple[float, float]]:
    """``coef=lo:hi,coef=lo:hi`` -> {coef: (lo, hi)}, checked against the family's coefficients."""
    if not text:
        return {}
    from data_pipelines.solvers.registry import get_family

    known = get_family(name).coefficient_ranges
    out = {}
    for item in text.split(","):
        key, _, bounds = item.partition("=")
        lo, _, hi = bounds.partition(":")
        try:
            out[key] = (float(lo), float(hi))
        except ValueError:
            key = None
        if key not in known:
            raise DownstreamSpecError(
                f"family spec {spec!r}: expected name:coef=lo:hi with coef in {sorted(known)}, got {item!r}"
            )
        if out[key][0] > out[key][1]:
            raise DownstreamSpecError(
                f"family spec {spec!r}: range of {key!r} is inverted (lo {lo} > hi {hi})"
            )
    return out


def family_trajectories(
    name: str,
    ranges: dict[str, tuple[float, float]],
    n: int,
    resolution: int,
    snapshots: int,
    seed: int,
    device: str = "cpu",
) -> list[Trajectory]:
    """`n` trajectories of built-in family `name` with its coefficient `ranges` replaced (the registered
    family keeps its documented ranges: the change is on this instance only)."""
    from data_pipelines.solvers.registry import get_family

    family = get_family(name)
    if ranges:
        family.coefficient_ranges = {**family.coefficient_ranges, **ranges}
    return family.generate(n, resolution, snapshots, seed, device).to_trajectories(family)


def load_task_trajectories(
    spec: DownstreamSpec, resolution: int, limit: int | None = None
) -> list[Trajectory]:
    """The spec's evaluation (and few-shot) trajectories: generated, read from a file/corpus, or streamed."""
    want = limit or spec.trajectories
    if spec.kind == "family":
        res = spec.resolution or resolution
        family = spec.source.split(":", 1)[0]  # `name=` renames the task, not the family
        return family_trajectories(family, spec.coefficient_ranges, want, res, spec.snapshots, spec.seed)
    path = Path(spec.source)
    if spec.kind == "path" and path.is_file():
        from data_pipelines.formats import read_any

        return read_any(path)[:want]
    from data_pipelines.corpus import load_trajectories

    return load_trajectories(spec.source)[:want]


@dataclass(frozen=True)
class Horizon:
    """Input and target snapshot indices, and the lead time in the models' unit (fraction of the span)."""

    input: int
    target: int
    lead: float


def horizon(spec: DownstreamSpec, n_snapshots: int) -> Horizon:
    """The spec's horizon on trajectories of `n_snapshots` (target defaults to the last snapshot)."""
    last = n_snapshots - 1
    target = spec.target_index
    if spec.lead_time is not None:
        steps = spec.lead_time * last
        if spec.lead_time <= 0 or abs(steps - round(steps)) > 1e-6:
            raise DownstreamSpecError(
                f"--downstream {spec.source!r}: lead={spec.lead_time} is not a multiple of the snapshot "
                f"spacing 1/{last}"
            )
        target = spec.input_index + round(steps)
    target = last if target is None else target
    if not 0 <= spec.input_index < target <= last:
        raise DownstreamSpecError(
            f"--downstream {spec.source!r}: need 0 <= input < target <= {last}, got input={spec.input_index}, "
            f"target={target}"
        )
    return Horizon(spec.input_index, target, (target - spec.input_index) / last)


def channel_groups(fields: list[str]) -> list[list[int]]:
    """Vector (u, v, w) and complex (re, im) fields form one group each; every other field its own."""
    groups, taken = [], set()
    for i, name in enumerate(fields):
        if i in taken:
            continue
        members = [i]
        for vector in VECTOR_FIELDS:
            if name in vector:
                members = [j for j, other in enumerate(fields) if other in vector]
        taken.update(members)
        groups.append(members)
    return groups


def relative_l1(pred: torch.Tensor, target: torch.Tensor, fields: list[str]) -> torch.Tensor:
    """Per-sample relative L1 `[B]` of `[B, C, H, W]` fields: per channel group sum|p - y| / sum|y|, then
    the mean over groups (Poseidon's metric, as `eval_suite.metrics` computes it)."""
    pred, target = pred.double(), target.double()
    err = (pred - target).abs().sum(dim=(-2, -1))
    ref = target.abs().sum(dim=(-2, -1))
    per_group = [err[:, g].sum(-1) / ref[:, g].sum(-1) for g in channel_groups(fields)]
    return torch.stack(per_group, dim=-1).mean(-1)


@torch.no_grad()
def zero_shot_errors(
    model: torch.nn.Module,
    channels: list[str],
    normalizer: Normalizer | None,
    trajs: list[Trajectory],
    hz: Horizon,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory relative L1 of `model` (as it is) and of persistence on the horizon `hz`.

    The trajectories are mapped into the model's channel layout `channels` and normalised with
    `normalizer` (the pretraining statistics); the prediction is denormalised and scored on the data's
    fields that the model outputs, in physical units. Returns (model errors [B], persistence errors [B]).
    """
    fields = list(trajs[0].fields)
    n_out = getattr(getattr(model, "config", None), "num_out_channels", len(channels))
    outputs = list(channels[:n_out])
    scored = [f for f in fields if f in outputs]
    if not scored:
        raise ValueError(
            f"downstream: none of the data's fields {fields} is an output of the model {outputs}"
        )
    u = np.stack([t.u for t in trajs])
    mapped, _ = ChannelMap(channels)(u, fields, normalizer, "downstream data")
    u = torch.from_numpy(u)
    x = torch.from_numpy(mapped[:, hz.input])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        time = torch.full((len(xb),), hz.lead, device=device, dtype=xb.dtype)
        preds.append(model(pixel_values=xb, time=time).output[:, :n_out].float().cpu())
    model.train(was_training)
    pred = torch.cat(preds)
    if normalizer is not None:
        pred = normalizer.denormalize(pred, outputs)
    pick_pred = [outputs.index(f) for f in scored]
    pick_data = [fields.index(f) for f in scored]
    target = u[:, hz.target][:, pick_data]
    errors = relative_l1(pred[:, pick_pred], target, scored)
    still = relative_l1(u[:, hz.input][:, pick_data], target, scored)
    return errors, still


def summarize(task: str, errors: torch.Tensor, persistence: torch.Tensor) -> dict[str, float]:
    """Metric rows of one task: median and mean relative L1 over trajectories, and persistence's median."""

    def median(v: torch.Tensor) -> float:
        v = v[torch.isfinite(v)]
        return float(torch.quantile(v, 0.5)) if len(v) else math.nan  # the midpoint, as numpy's median

    finite = errors[torch.isfinite(errors)]
    return {
        metric_key(task, "rel_l1"): median(errors),
        metric_key(task, "rel_l1_mean"): float(finite.mean()) if len(finite) else math.nan,
        metric_key(task, "persistence_rel_l1"): median(persistence),
    }


def few_shot_model(
    model: torch.nn.Module,
    shots: list[Trajectory],
    channels: list[str],
    normalizer: Normalizer | None,
    *,
    steps: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    autocast=contextlib.nullcontext,
) -> torch.nn.Module:
    """A copy of `model` fine-tuned on the all2all pairs of `shots` for `steps` AdamW steps at a constant `lr`.

    A probe of how well the current weights adapt, not a recipe (the fine-tuning recipes live in `finetune`):
    the same budget at every evaluation, batches drawn with a private generator so that pretraining's
    random stream is untouched and a resumed run evaluates exactly as the uninterrupted one.
    """
    net = copy.deepcopy(model)
    net.train()
    data = PairDataset(shots, channels, normalizer)
    device = next(net.parameters()).device
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        batch = torch.utils.data.default_collate([data[int(i)] for i in pick])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    net.eval()
    return net


@dataclass
class _Task:
    spec: DownstreamSpec
    mode: str
    test: list[Trajectory]
    shots: list[Trajectory]
    horizon: Horizon


class DownstreamSuite:
    """The `--downstream` tasks of a pretraining run: parsed, their trajectories loaded and checked against
    the model's channel layout once, before training; called at evaluation steps with the trainer, it
    returns ``{"downstream/<task>/<metric>": value}``.

    Ranks score disjoint strided shares of each test set; per-trajectory errors are gathered so that the
    median is over the whole set, whatever the number of processes.
    """

    def __init__(self, specs: list[str], channels: list[str], normalizer: Normalizer | None, config):
        from foundation.configuration_scot import ScOTConfig

        self.channels, self.normalizer = list(channels), normalizer
        self.batch_size = getattr(config, "batch_size", 8)
        resolution = ScOTConfig.from_preset(config.preset, **config.model_overrides).image_size
        self.tasks: list[_Task] = []
        for text in specs:
            spec = parse_downstream(text)
            most = max(spec.shots(m) for m in spec.modes)
            trajs = load_task_trajectories(spec, resolution, limit=spec.trajectories + most)
            test, rest = trajs[: spec.trajectories], trajs[spec.trajectories :]
            if len(test) < spec.trajectories or len(rest) < most:
                raise DownstreamSpecError(
                    f"--downstream {text!r}: {len(trajs)} trajectories, {spec.trajectories} test + {most} shots needed"
                )
            ChannelMap(self.channels).plan(test[0].fields, f"--downstream {text!r}")  # fields fit the layout
            hz = horizon(spec, len(test[0].u))
            for mode in spec.modes:
                self.tasks.append(_Task(spec, mode, test, rest[: spec.shots(mode)], hz))
        names = [t.spec.task(t.mode) for t in self.tasks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DownstreamSpecError(f"--downstream: task names {duplicated} repeat; give each spec a name=")

    def __call__(self, trainer) -> dict[str, float]:
        """The metrics of the trainer's current model (the core's evaluate hook)."""
        return self.score(trainer.accelerator.unwrap_model(trainer.model), trainer.accelerator)

    def score(self, model: torch.nn.Module, accelerator=None) -> dict[str, float]:
        """Every task's metrics for `model`; with an `accelerator`, ranks share the test sets and its autocast
        applies. The model's training mode is restored afterwards."""
        acc = accelerator or _SingleProcess()
        was_training = model.training
        metrics = {}
        for task in self.tasks:
            net = model
            if task.shots:
                net = few_shot_model(
                    model,
                    task.shots,
                    self.channels,
                    self.normalizer,
                    steps=task.spec.steps,
                    lr=task.spec.lr,
                    batch_size=self.batch_size,
                    seed=task.spec.seed,
                    autocast=acc.autocast,
                )
            mine = task.test[acc.process_index :: acc.num_processes]
            with acc.autocast():
                errors, still = (
                    zero_shot_errors(net, self.channels, self.normalizer, mine, task.horizon, self.batch_size)
                    if mine
                    else (torch.empty(0), torch.empty(0))
                )
            errors, still = (_gather(acc, v, len(task.test)) for v in (errors, still))
            metrics.update(summarize(task.spec.task(task.mode), errors, still))
        model.train(was_training)
        return metrics


class _SingleProcess:
    """What `DownstreamSuite.score` needs of an accelerator, for one process without one."""

    process_index, num_processes = 0, 1
    autocast = staticmethod(contextlib.nullcontext)


def _gather(acc, values: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's per-trajectory values, padded with NaN to one length for the collective, then unpadded."""
    if acc.num_processes == 1:
        return values
    width = -(-total // acc.num_processes)
    padded = torch.full((width,), math.nan, dtype=torch.float64, device=acc.device)
    padded[: len(values)] = values.to(acc.device)
    gathered = acc.gather(padded).cpu()
    return gathered[torch.isfinite(gathered)]
