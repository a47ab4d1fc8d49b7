"""Scaling-law study: pretrain small scOT models along one axis, evaluate them, fit E = a x^-alpha + c.

Axes: ``model`` (embedding width; x = parameter count), ``data`` (pretraining trajectories per family;
x = total trajectories) and ``families`` (number of pretraining families, LeMON's axis; x = families,
scored after few-shot fine-tuning on a held-out target family). Pretraining here is a short in-process
run of the finetune training loop on freshly generated all2all pairs, which is what a laptop-sized
study affords; every point of an axis gets the same step budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_pipelines.normalization import Normalizer
from data_pipelines.solvers.registry import get_family
from data_pipelines.trajectory import Trajectory
from eval_suite import plots
from eval_suite.protocol import TrainedOperator, forecast, loss_slices, score
from eval_suite.report import environment, figure, fmt, table, write_report
from eval_suite.scaling import fit_power_law
from eval_suite.studies.candidates import Budget, fit_candidate
from finetune.data import pair_dataset
from finetune.trainer import train
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT

AXES = {
    "model": ("embedding width", "parameters", [8, 16, 24, 32]),
    "data": ("trajectories per family", "pretraining trajectories", [2, 4, 8, 16]),
    "families": ("pretraining families", "pretraining families", [1, 2, 3]),
}
HEADLINE = "rel_l1"


@dataclass
class ScalingConfig:
    """The axis and its values, the families, sizes, seeds and the shared training budget."""

    axis: str = "data"
    values: list[int] | None = None
    families: list[str] = field(default_factory=lambda: ["ns_sines", "ns_shear_layer", "ns_gauss"])
    target_family: str = "ns_kolmogorov"
    target_shots: int = 4
    trajectories: int = 8
    embed_dim: int = 16
    resolution: int = 32
    snapshots: int = 5
    n_test: int = 4
    seeds: list[int] = field(default_factory=lambda: [0])
    bootstrap: int = 0
    budget: Budget = field(default_factory=Budget)

    def to_dict(self) -> dict:
        return asdict(self)


def _generate(name: str, n: int, cfg: ScalingConfig, seed: int) -> list[Trajectory]:
    family = get_family(name)
    return family.generate(n, cfg.resolution, cfg.snapshots, seed).to_trajectories(family)


def _layout(families: Sequence[str]) -> list[str]:
    """The union of the families' fields, in first-seen order: one channel layout for the whole axis."""
    return list(dict.fromkeys(f for name in families for f in get_family(name).fields))


def pretrain_small(
    trajs: Sequence[Trajectory],
    val: Sequence[Trajectory],
    layout: list[str],
    embed_dim: int,
    cfg: ScalingConfig,
    seed: int,
) -> TrainedOperator:
    """A fresh tiny-preset scOT of width `embed_dim` trained on the all2all pairs of `trajs`."""
    torch.manual_seed(seed)
    side = cfg.resolution
    config = ScOTConfig.from_preset(
        "tiny",
        embed_dim=embed_dim,
        image_size=side if side % 32 == 0 else 64,
        num_channels=len(layout),
        num_out_channels=len(layout),
        field_names=layout,
        channel_slice_list_normalized_loss=loss_slices(layout),
    )
    model = ScOT(config)
    normalizer = Normalizer.from_trajectories(trajs)
    train_set = pair_dataset(trajs, layout, normalizer, stride=cfg.budget.stride)
    val_set = pair_dataset(val, layout, normalizer, stride=cfg.budget.stride)
    train(model, train_set, val_set, config=cfg.budget.train_config(seed))
    return TrainedOperator(model, tuple(layout), normalizer)


def _score(op: TrainedOperator, tests: dict[str, list[Trajectory]]) -> float:
    """Mean over test families of the median relative L1 error (direct prediction to the last snapshot)."""
    return float(np.mean([score(forecast(op, t))[0][HEADLINE]["median"] for t in tests.values()]))


def run_scaling(
    out: str | Path, *, config: ScalingConfig | None = None, log: Callable[[str], None] = lambda _: None
) -> dict:
    """Run the study along `config.axis`; writes report.md, metrics.json, the curve and checkpoints to `out`."""
    cfg = config or ScalingConfig()
    if cfg.axis not in AXES:
        raise ValueError(f"scaling: axis must be one of {sorted(AXES)}, got {cfg.axis!r}")
    label, xlabel, default_values = AXES[cfg.axis]
    values = sorted(cfg.values or default_values)
    if cfg.axis == "families" and values[-1] > len(cfg.families):
        raise ValueError(
            f"scaling: {values[-1]} families asked, only {len(cfg.families)} listed: {cfg.families}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = _layout([*cfg.families, cfg.target_family] if cfg.axis == "families" else cfg.families)

    points: dict[int, dict] = {}
    for value in values:
        errors, x = [], None
        for seed in cfg.seeds:
            names = cfg.families[:value] if cfg.axis == "families" else cfg.families
            per_family = value if cfg.axis == "data" else cfg.trajectories
            width = value if cfg.axis == "model" else cfg.embed_dim
            log(f"scaling: {cfg.axis}={value}, seed {seed}: pretraining on {names}")
            data = {n: _generate(n, per_family + 1, cfg, seed * 1000 + k) for k, n in enumerate(names)}
            trajs = [t for ts in data.values() for t in ts[1:]]
            op = pretrain_small(trajs, [ts[0] for ts in data.values()], layout, width, cfg, seed)
            if cfg.axis == "families":
                ckpt = out / "checkpoints" / f"families-{value}-seed{seed}"
                op.model.save_pretrained(ckpt)
                target = _generate(cfg.target_family, cfg.target_shots + 1 + cfg.n_test, cfg, 10**6 + seed)
                shots, val, test = (
                    target[: cfg.target_shots],
                    target[cfg.target_shots : cfg.target_shots + 1],
                    target[-cfg.n_test :],
                )
                op, _ = fit_candidate("full", shots, val, budget=cfg.budget, seed=seed, model=str(ckpt))
                errors.append(_score(op, {cfg.target_family: test}))
            else:
                tests = {n: _generate(n, cfg.n_test, cfg, 10**6 + k) for k, n in enumerate(names)}
                errors.append(_score(op, tests))
            x = {
                "model": sum(p.numel() for p in op.model.parameters()),
                "data": len(trajs),
                "families": value,
            }[cfg.axis]
        points[value] = {
            "x": x,
            "errors": errors,
            "mean": float(np.mean(errors)),
            "std": float(np.std(errors)),
        }

    xs = [points[v]["x"] for v in values]
    ys = [points[v]["mean"] for v in values]
    try:
        fit = fit_power_law(xs, ys, with_offset=len(xs) >= 4, bootstrap=cfg.bootstrap).to_dict()
    except ValueError as err:  # too few or degenerate points
        fit = {"unavailable": str(err)}
    metrics = {
        "study": "scaling",
        "axis": cfg.axis,
        "x": xlabel,
        "headline": f"{HEADLINE}: median over test samples, mean over test families, mean +- std over seeds",
        "config": cfg.to_dict(),
        "layout": layout,
        "points": points,
        "fit": fit,
        "pretraining": "in-process finetune-loop pretraining on generated data (same step budget per point)",
        "environment": environment(),
    }
    curve = {cfg.axis: {points[v]["x"]: (points[v]["mean"], points[v]["std"]) for v in values}}
    law = None if "unavailable" in fit else fit_power_law(xs, ys, with_offset=len(xs) >= 4)
    path = plots.plot_curves(
        curve,
        out / f"scaling_{cfg.axis}.png",
        xlabel=xlabel,
        ylabel="median relative L1 error",
        title=f"scaling in {xlabel}",
        fits={cfg.axis: law} if law else None,
    )
    rows = [[v, points[v]["x"], points[v]["mean"], points[v]["std"]] for v in values]
    fit_text = (
        f"unavailable: {fit['unavailable']}"
        if "unavailable" in fit
        else (
            f"E = {fmt(fit['a'])} x^-{fmt(fit['alpha'])} + {fmt(fit['c'])}; "
            f"alpha {int(fit['confidence'] * 100)}% CI [{fmt(fit['ci']['alpha'][0])}, {fmt(fit['ci']['alpha'][1])}] "
            f"({fit['method']}); R^2 = {fmt(fit['r2'])}" + "".join(f"\n- {n}" for n in fit["notes"])
        )
    )
    sections = [
        (
            "Setup",
            f"- axis `{cfg.axis}` ({label}: {values}), layout {layout}\n- {cfg.to_dict()}\n- {metrics['pretraining']}",
        ),
        ("Points", table([label, xlabel, "error (mean)", "std over seeds"], rows)),
        ("Power-law fit", fit_text),
        ("Figures", figure(path, out, f"scaling in {xlabel}")),
    ]
    write_report(out, f"Scaling study: {cfg.axis}", sections, metrics)
    return metrics
