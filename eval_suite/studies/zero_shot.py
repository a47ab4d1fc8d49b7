"""Zero-shot study: a pretrained checkpoint, untouched, scored on unseen families and unseen coefficients.

Evaluation sets are data files (any reader of `data_pipelines.formats`) or built-in families generated
here; a family spec ``name:coef=lo:hi,...`` narrows or moves its coefficient ranges, which is how
coefficients outside a checkpoint's pretraining ranges are drawn. Persistence (the input as the
prediction) is scored on the same horizon beside the checkpoint on every set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from eval_suite import plots
from eval_suite.metrics import METRICS, radial_error_spectrum
from eval_suite.protocol import forecast, persistence, score
from eval_suite.report import environment, figure, fmt, table, write_report
from eval_suite.studies.candidates import pretrained_operator
from finetune.data import load_trajectories
from finetune.trainer import resolve_device
from foundation.pretrain.downstream import family_trajectories, parse_ranges

HEADLINE = "rel_l1"


@dataclass
class ZeroShotConfig:
    """Sizes of generated sets, the evaluation mode and where normalisation statistics come from."""

    trajectories: int = 8
    resolution: int = 64
    snapshots: int = 11
    seed: int = 1234
    mode: str = "direct"
    rollout_stride: int = 1
    stats: str | None = (
        None  # a stats.json (e.g. the pretraining corpus'); default: each set's own statistics
    )
    device: str = "auto"
    """Where trajectories are generated: auto (CUDA when present) | cpu | cuda."""
    input_index: int = 0
    target_index: int | None = None
    """Snapshot predicted from `input_index` (default: the last one)."""
    lead_time: float | None = None
    """Instead of target_index: the lead time as a fraction of the trajectory span."""

    def to_dict(self) -> dict:
        return asdict(self)

    def horizon(self) -> dict:
        """The forecast options that fix what is scored (mode, input and target snapshots)."""
        return dict(
            mode=self.mode,
            input_index=self.input_index,
            target_index=self.target_index,
            lead_time=self.lead_time,
            stride=self.rollout_stride,
        )


def generate_family_set(spec: str, config: ZeroShotConfig) -> list[Trajectory]:
    """Trajectories of a family spec ``name`` or ``name:coef=lo:hi,coef=lo:hi`` (ranges replace the family's)."""
    name, _, ranges = spec.partition(":")
    name = name.strip()
    return family_trajectories(
        name,
        parse_ranges(name, ranges, spec),
        config.trajectories,
        config.resolution,
        config.snapshots,
        config.seed,
        resolve_device(config.device),
    )


def run_zero_shot(
    model: str,
    out: str | Path,
    *,
    data: Sequence[str] = (),
    families: Sequence[str] = (),
    config: ZeroShotConfig | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Score `model` as it is on every evaluation set; writes report.md, metrics.json and figures to `out`."""
    cfg = config or ZeroShotConfig()
    if not data and not families:
        raise ValueError(
            "zero-shot: give at least one evaluation set (--data FILE or --family NAME[:coef=lo:hi])"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sets: dict[str, list[Trajectory]] = {}
    for path in data:
        sets[str(path)] = load_trajectories(path)
    for spec in families:
        log(f"zero-shot: generating {spec}")
        sets[spec] = generate_family_set(spec, cfg)
    stats = Normalizer.from_json(cfg.stats) if cfg.stats else None
    results, spectra, figs = {}, {}, {}
    for k, (name, trajs) in enumerate(sets.items()):
        log(f"zero-shot: scoring {name}")
        still = score(persistence(trajs, **cfg.horizon()))[0]
        try:
            op = pretrained_operator(model, trajs[0].fields, stats or Normalizer.from_trajectories(trajs))
        except ValueError as err:  # fields the checkpoint has no channels for: zero-shot is undefined
            results[name] = {"unavailable": str(err), "persistence": still}
            continue
        fc = forecast(op, trajs, **cfg.horizon())
        if fc.fields != list(trajs[0].fields):  # score persistence on the fields the model is scored on
            still = score(persistence(trajs, **cfg.horizon(), fields=fc.fields))[0]
        results[name] = {
            "summary": score(fc)[0],
            "persistence": still,
            "n_trajectories": len(trajs),
            "fields": fc.fields,
        }
        pred, target = (fc.pred[:, -1], fc.target[:, -1]) if fc.pred.ndim == 5 else (fc.pred, fc.target)
        spectra[name] = radial_error_spectrum(pred, target)
        figs[name] = plots.plot_fields(
            pred[0], target[0], fc.fields, out / f"fields_{k}.png", f"{name}: sample 0"
        )
    verdict = _verdict(results)
    metrics = {
        "study": "zero-shot",
        "model": model,
        "config": cfg.to_dict(),
        "normalization": cfg.stats or "each evaluation set's own statistics",
        "verdict": verdict,
        "results": results,
        "environment": environment(),
    }
    rows = []
    for name, r in results.items():
        if "summary" in r:
            rows.append([name, "checkpoint"] + [r["summary"][m]["median"] for m in METRICS])
        rows.append([name, "persistence"] + [r["persistence"][m]["median"] for m in METRICS])
    target = "the last" if cfg.target_index is None else f"snapshot {cfg.target_index}"
    if cfg.lead_time is not None:
        target = f"lead time {cfg.lead_time:g} of the span"
    sections = [
        (
            "Setup",
            f"- checkpoint `{model}`, evaluation `{cfg.mode}` from snapshot {cfg.input_index} to {target}; "
            f"persistence (the input as the prediction) on the same horizon\n- {cfg.to_dict()}",
        ),
        ("Errors (median over samples)", table(["set", "candidate", *METRICS], rows)),
    ]
    missing = {name: r["unavailable"] for name, r in results.items() if "unavailable" in r}
    if missing:
        sections.append(
            ("Sets without a zero-shot score", "\n".join(f"- {n}: {why}" for n, why in missing.items()))
        )
    if spectra:
        spec_path = plots.plot_spectra(spectra, out / "error_spectra.png", "zero-shot error spectra")
        pictures = [figure(spec_path, out, "spectra")] + [figure(p, out, n) for n, p in figs.items()]
        sections.append(("Figures", "\n\n".join(pictures)))
    write_report(out, "Zero-shot study", sections, metrics, verdict=verdict)
    return metrics


def _verdict(results: dict) -> str:
    """First line: on how many sets the checkpoint beats persistence (saying so when it beats it on none)."""
    scored = {n: r for n, r in results.items() if "summary" in r}
    if not scored:
        return "the checkpoint could not be scored on any set (see the sets without a zero-shot score)"
    wins = [
        n
        for n, r in scored.items()
        if r["summary"][HEADLINE]["median"] < r["persistence"][HEADLINE]["median"]
    ]
    pairs = ", ".join(
        f"{n} {fmt(r['summary'][HEADLINE]['median'], 3)} vs {fmt(r['persistence'][HEADLINE]['median'], 3)}"
        for n, r in scored.items()
    )
    if not wins:
        return (
            f"the checkpoint is no better than persistence (the input as the prediction) on any set "
            f"(relative L1, checkpoint vs persistence: {pairs})"
        )
    return f"the checkpoint beats persistence on {len(wins)} of {len(scored)} sets (relative L1, checkpoint vs persistence: {pairs})"
