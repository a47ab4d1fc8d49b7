"""The laptop scaling study: small `pdefm pretrain` runs along one axis, then the same fit as `--runs`.

Axes: ``model`` (embedding width; x = parameters), ``data`` (trajectories per pretraining family; x = total
trajectories), ``families`` (the first k pretraining families, LeMON's axis; x = k) and ``compute`` (widths
as for ``model``; x = training FLOPs). Every run is a real pretraining run (`foundation.pretrain.loop`) on
a generated corpus, with the same steps, batch and learning rate; it records its downstream error while it
trains (`--downstream`): zero-shot on held-out trajectories of its pretraining families for the model, data
and compute axes, few-shot on the held-out target family for the families axis. The runs then go through
`scaling_runs.run_scaling_runs`, so the in-process and the cluster study measure and fit the same thing.
The same architecture with random weights, scored on the same tasks, is drawn beside them as the
no-pretraining reference. Runs and corpora are kept under the output folder; a rerun resumes or reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from data_pipelines.corpus import generate_corpus
from data_pipelines.normalization import Normalizer
from data_pipelines.solvers.registry import get_family
from eval_suite.studies.scaling_runs import AXES, RunsScalingConfig, run_scaling_runs
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.downstream import DownstreamSuite
from foundation.pretrain.loop import pretrain

DEFAULT_VALUES = {
    "model": [8, 16, 24, 32],
    "data": [2, 4, 8, 16],
    "families": [1, 2, 3],
    "compute": [8, 16, 24, 32],
}
VALUE_LABEL = {
    "model": "embedding width",
    "data": "trajectories per family",
    "families": "pretraining families",
    "compute": "embedding width",
}
TEST_SEED = 10**6
"""Held-out trajectories are generated from seeds far from the corpora's."""


@dataclass
class ScalingConfig:
    """The axis and its values, the families, sizes, seeds and the shared pretraining budget."""

    axis: str = "data"
    values: list[int] | None = None
    families: list[str] = field(default_factory=lambda: ["ns_sines", "ns_shear_layer", "ns_gauss"])
    target_family: str = "burgers"
    target_shots: int = 4
    trajectories: int = 8
    """Pretraining trajectories per family (model, compute and families axes)."""
    embed_dim: int = 16
    """Model width (data and families axes)."""
    resolution: int = 32
    snapshots: int = 5
    n_test: int = 4
    """Held-out trajectories per downstream task."""
    seeds: list[int] = field(default_factory=lambda: [0])
    bootstrap: int = 0
    steps: int = 200
    """Pretraining optimizer steps of every run."""
    batch_size: int = 8
    learning_rate: float = 1e-3
    finetune_steps: int = 50
    """Few-shot steps of the families axis' target task at each evaluation."""
    evaluations: int = 4
    """Downstream evaluations per run (every steps/evaluations steps)."""
    input_index: int = 0
    target_index: int | None = None
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def _layout(families: Sequence[str]) -> list[str]:
    """The union of the families' fields, in first-seen order: one channel layout for the whole axis."""
    return list(dict.fromkeys(f for name in families for f in get_family(name).fields))


def _horizon(cfg: ScalingConfig) -> str:
    text = f" input={cfg.input_index}"
    return text + (f" target={cfg.target_index}" if cfg.target_index is not None else "")


def downstream_specs(cfg: ScalingConfig, families: Sequence[str]) -> list[str]:
    """What each run is scored on while it trains (the `--downstream` specs)."""
    sizes = f"n={cfg.n_test} resolution={cfg.resolution} snapshots={cfg.snapshots}{_horizon(cfg)}"
    if cfg.axis == "families":
        return [
            f"{cfg.target_family} few-shot:{cfg.target_shots} {sizes} seed={TEST_SEED} "
            f"steps={cfg.finetune_steps}"
        ]
    return [f"{name} zero-shot {sizes} seed={TEST_SEED + k}" for k, name in enumerate(families)]


def _plan(cfg: ScalingConfig, value: int) -> tuple[list[str], int, int]:
    """(pretraining families, trajectories per family, width) of the run at axis `value`."""
    families = cfg.families[:value] if cfg.axis == "families" else cfg.families
    per_family = value if cfg.axis == "data" else cfg.trajectories
    width = value if cfg.axis in ("model", "compute") else cfg.embed_dim
    return families, per_family, width


def run_scaling(
    out: str | Path, *, config: ScalingConfig | None = None, log: Callable[[str], None] = lambda _: None
) -> dict:
    """Pretrain one run per axis value and seed under `out/runs`, then fit them; writes report.md,
    metrics.json and figures to `out`."""
    cfg = config or ScalingConfig()
    if cfg.axis not in AXES:
        raise ValueError(f"scaling: axis must be one of {sorted(AXES)}, got {cfg.axis!r}")
    values = sorted(cfg.values or DEFAULT_VALUES[cfg.axis])
    if cfg.axis == "families" and values[-1] > len(cfg.families):
        raise ValueError(
            f"scaling: {values[-1]} families asked, only {len(cfg.families)} listed: {cfg.families}"
        )
    if cfg.axis == "families" and cfg.target_family in cfg.families:
        raise ValueError(f"scaling: the target family {cfg.target_family!r} is also a pretraining family")
    out = Path(out)
    layout = _layout([*cfg.families, cfg.target_family] if cfg.axis == "families" else cfg.families)
    runs, labels = [], []
    for value in values:
        for seed in cfg.seeds:
            families, per_family, width = _plan(cfg, value)
            corpus = out / "corpora" / f"{'+'.join(families)}-{per_family}-seed{seed}"
            label = f"{cfg.axis}-{value}-seed{seed}"
            run = out / "runs" / label
            if not (run / "model" / "train_summary.json").exists():  # a finished run is reused as it is
                generate_corpus(
                    corpus,
                    [get_family(n) for n in families],
                    per_family,
                    resolution=cfg.resolution,
                    snapshots=cfg.snapshots,
                    seed=seed,
                    progress=False,
                )
                log(f"scaling: pretraining {label} (width {width}, {per_family} trajectories of {families})")
                pretrain(
                    PretrainConfig(
                        corpus=[str(corpus)],
                        out=str(run),
                        channels=layout,
                        model_overrides={"image_size": cfg.resolution, "embed_dim": width},
                        max_steps=cfg.steps,
                        batch_size=cfg.batch_size,
                        learning_rate=cfg.learning_rate,
                        downstream=downstream_specs(cfg, families),
                        downstream_every=max(1, cfg.steps // cfg.evaluations),
                        checkpoint_every=max(1, cfg.steps // 2),
                        log_every=max(1, cfg.steps // 20),
                        seed=seed,
                        device=cfg.device,
                        resume="auto",
                        log_with="none",
                        progress=False,
                    )
                )
            runs.append(str(run))
            labels.append(label)
    references = untrained_reference(runs[-len(cfg.seeds) :], cfg.seeds, log)
    context = {
        "pretrained here": f"{len(runs)} `pdefm pretrain` runs under runs/ ({VALUE_LABEL[cfg.axis]} {values}, "
        f"seeds {cfg.seeds}), each {cfg.steps} steps of batch {cfg.batch_size} at learning rate "
        f"{cfg.learning_rate}, {cfg.resolution}x{cfg.resolution}, {cfg.snapshots} snapshots",
        "downstream": downstream_specs(cfg, cfg.families),
        "config": cfg.to_dict(),
    }
    return run_scaling_runs(
        runs,
        out,
        config=RunsScalingConfig(axis=cfg.axis, bootstrap=cfg.bootstrap),
        labels=labels,
        context=context,
        references=references,
        log=log,
    )


def untrained_reference(runs: Sequence[str], seeds: Sequence[int], log) -> dict[str, dict]:
    """The runs' downstream tasks scored on their architecture with random weights (one per seed): the
    error with no pretraining at all, against which every point of the axis reads. Cached in the run folder."""
    errors = {}
    for run, seed in zip(runs, seeds, strict=True):
        cache = Path(run) / "untrained_reference.json"
        if not cache.exists():
            log(f"scaling: scoring the untrained reference of {Path(run).name}")
            args = PretrainConfig(**json.loads((Path(run) / "training_args.json").read_text()))
            config = ScOTConfig.from_pretrained(Path(run) / "model")
            torch.manual_seed(seed)
            suite = DownstreamSuite(
                args.downstream,
                config.field_names,
                Normalizer.from_json(Path(args.corpus[0]) / "stats.json"),
                args,
            )
            cache.write_text(json.dumps(suite.score(ScOT(config))))
        errors[str(seed)] = json.loads(cache.read_text())
    return {"untrained (same architecture, random weights)": errors}
