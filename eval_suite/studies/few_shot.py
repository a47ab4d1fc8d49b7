"""Few-shot study: error against number of training trajectories for methods and baselines, several seeds,
with Poseidon's accuracy and efficiency gains over FNO and the checkpoint's zero-shot error alongside.

Every report also scores persistence (the input as the prediction) on the same horizon and, when a
pretrained method runs, scOT from scratch with the checkpoint's architecture; its first line says whether
pretraining helped (paired over seeds) and whether any candidate beats persistence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from eval_suite import plots
from eval_suite.gains import accuracy_gain, efficiency_gain
from eval_suite.metrics import METRICS, radial_error_spectrum
from eval_suite.protocol import Forecast, TrainedOperator, forecast, persistence, resolve_horizon, score
from eval_suite.report import environment, figure, fmt, table, write_report
from eval_suite.studies.candidates import (
    SCRATCH,
    Budget,
    check_candidates,
    fit_candidate,
    physguard_bases,
    pretrained_operator,
    scratch_options,
    study_methods,
)
from eval_suite.studies.splits import draw_shots, split_test
from eval_suite.studies.tuning import tune_candidate
from eval_suite.verdict import pretrained_vs_scratch, versus_persistence
from finetune.channels import check_channel_mode
from finetune.data import load_trajectories
from finetune.methods.physguard import PhysGuardOptions

HEADLINE = "rel_l1"


@dataclass
class FewShotConfig:
    """What to run: shot counts, seeds, candidates (methods and baselines), splits and evaluation mode."""

    shots: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    candidates: list[str] = field(default_factory=lambda: ["full", "fno", "unet", "scot_scratch"])
    n_val: int = 2
    n_test: int = 8
    mode: str = "direct"
    rollout_stride: int = 1
    input_index: int = 0
    """Snapshot the candidates predict from (and persistence returns)."""
    target_index: int | None = None
    """Snapshot predicted (default: the last one)."""
    lead_time: float | None = None
    """Instead of target_index: the lead time as a fraction of the trajectory span."""
    fields: list[str] | None = None
    channels: str = "auto"
    """How methods map the fields onto the checkpoint: 'same'-named channels, 'fresh' embedding/recovery, or
    'auto' (fresh for a family the checkpoint records it was not trained on)."""
    split_seed: int = 0
    budget: Budget = field(default_factory=Budget)
    baseline_options: dict[str, dict] = field(default_factory=dict)  # e.g. {"unet": {"width": 16}}
    sim_data: str | None = None
    """Simulation (pretraining) data that PhysGuard protects: a corpus folder, file or Hub id."""
    sim_trajectories: int = 32
    physguard: PhysGuardOptions = field(default_factory=PhysGuardOptions)
    lr_scales: dict[str, float] = field(default_factory=dict)
    """Per candidate, a factor on its learning rates (a method's group rates, a baseline's budget.lr)."""
    lr_grid: list[float] | None = None
    """Factors to choose from per candidate and shot count on the first seed's validation split (every seed
    then trains with the chosen one); None: `lr_scales` as given."""

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


def evaluate_operator(
    op: TrainedOperator, test: Sequence[Trajectory], config: FewShotConfig
) -> tuple[dict, Forecast]:
    """Summary of every metric of `op` on the test trajectories, and the forecast itself (for figures)."""
    fc = forecast(op, test, **config.horizon())
    return score(fc)[0], fc


def with_scratch(candidates: Sequence[str]) -> list[str]:
    """The candidates, plus scOT from scratch whenever a pretrained method is among them."""
    names = list(dict.fromkeys(candidates))
    if any(c in study_methods() for c in names) and SCRATCH not in names:
        names.append(SCRATCH)
    return names


def _aggregate(summaries: list[dict]) -> tuple[dict, dict]:
    """Mean and std over seeds of each metric's median over test samples."""
    mean, std = {}, {}
    for name in METRICS:
        values = np.array([s[name]["median"] for s in summaries], dtype=float)
        ok = values[np.isfinite(values)]
        mean[name] = float(ok.mean()) if len(ok) else float("nan")
        std[name] = float(ok.std()) if len(ok) else float("nan")
    return mean, std


def _last(fc: Forecast):
    """The final prediction and target (the last rollout step) of every test sample."""
    return (fc.pred[:, -1], fc.target[:, -1]) if fc.pred.ndim == 5 else (fc.pred, fc.target)


def run_few_shot(
    data: str | Path | Sequence[Trajectory],
    out: str | Path,
    *,
    model: str | None = None,
    config: FewShotConfig | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Run the study and write `out/report.md`, `out/metrics.json` and PNG figures; returns the metrics."""
    cfg = config or FewShotConfig()
    check_candidates(cfg.candidates, model)
    check_channel_mode(cfg.channels)
    candidates = with_scratch(cfg.candidates)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trajs = load_trajectories(data, fields=cfg.fields)
    pool, test = split_test(trajs, cfg.n_test, cfg.split_seed)
    shots = sorted(set(cfg.shots))
    draw_shots(pool, shots[-1], cfg.n_val, cfg.seeds[0])  # fail before any training if the data is too small
    still = score(persistence(test, **cfg.horizon()))[0]  # also checks the horizon before any training
    options = {name: dict(cfg.baseline_options.get(name, {})) for name in candidates}
    if model is not None and SCRATCH in candidates:
        options[SCRATCH] = {**scratch_options(model), **options[SCRATCH]}
    bases = None
    if "physguard" in cfg.candidates:
        if cfg.sim_data is None:
            raise ValueError(
                "few-shot: candidate 'physguard' needs the simulation data it protects (--sim-data)"
            )
        log(
            f"few-shot: PhysGuard bases of {model} from {cfg.sim_trajectories} trajectories of {cfg.sim_data}"
        )
        sim = load_trajectories(cfg.sim_data)
        sim = random.Random(cfg.split_seed).sample(sim, min(cfg.sim_trajectories, len(sim)))
        bases = physguard_bases(model, trajs[0].fields, sim, cfg.physguard)

    results: dict = {name: {} for name in candidates}
    tuned: dict[str, dict] = {}
    keep: dict[str, Forecast] = {}
    for name in candidates:
        for n in shots:
            runs = {}
            lr_scale = cfg.lr_scales.get(name, 1.0)
            for seed in cfg.seeds:
                log(f"few-shot: {name} with {n} trajectories, seed {seed}")
                train, val = draw_shots(pool, n, cfg.n_val, seed)
                fit = dict(
                    budget=cfg.budget,
                    seed=seed,
                    model=model,
                    bases=bases,
                    alpha=cfg.physguard.alpha,
                    channels=cfg.channels,
                )
                if cfg.lr_grid and seed == cfg.seeds[0]:  # the first seed's validation split picks the factor
                    choice = tune_candidate(
                        name, train, val, grid=cfg.lr_grid, log=log, **fit, **options[name]
                    )
                    lr_scale, (op, history) = choice.scale, choice.fitted
                    tuned.setdefault(name, {})[n] = choice.to_dict()
                else:
                    op, history = fit_candidate(name, train, val, lr_scale=lr_scale, **fit, **options[name])
                summary, fc = evaluate_operator(op, test, cfg)
                train_record = {
                    "steps": history.steps,
                    "best_epoch": history.best_epoch,
                    "lr_scale": lr_scale,
                }
                runs[seed] = {
                    "summary": summary,
                    "train": train_record | {"best_val_loss": history.best_val_loss},
                }
                if n == shots[-1] and seed == cfg.seeds[0]:
                    keep[name] = fc
            mean, std = _aggregate([r["summary"] for r in runs.values()])
            results[name][n] = {"seeds": runs, "mean": mean, "std": std}

    zero_shot = {}
    if model is not None and any(c in study_methods() for c in candidates):
        try:
            op = pretrained_operator(model, trajs[0].fields, Normalizer.from_trajectories(pool))
            zero_shot = {
                "summary": evaluate_operator(op, test, cfg)[0],
                "normalization": "statistics of the pool",
            }
        except ValueError as err:  # the data's fields do not fit the checkpoint without new layers
            zero_shot = {"unavailable": str(err)}

    curves = {name: {n: results[name][n]["mean"][HEADLINE] for n in shots} for name in candidates}
    gains = _gains(curves, shots)
    verdicts = _verdicts(results, curves, zero_shot, still[HEADLINE]["median"], shots)
    metrics = {
        "study": "few-shot",
        "model": model,
        "data": data if isinstance(data, (str, Path)) else f"{len(trajs)} trajectories",
        "fields": list(test[0].fields),
        "n_trajectories": len(trajs),
        "config": cfg.to_dict(),
        "candidates": candidates,
        "horizon": _horizon_record(test, cfg),
        "headline": f"{HEADLINE}: median over test samples, mean +- std over seeds",
        "results": results,
        "lr_search": tuned,
        "curves": curves,
        "persistence": {"summary": still, HEADLINE: still[HEADLINE]["median"]},
        "zero_shot": zero_shot,
        **verdicts,
        **gains,
        "environment": environment(),
    }
    figures = _figures(results, keep, shots, out)
    sections = _sections(metrics, results, shots, figures, out)
    write_report(out, "Few-shot study", sections, metrics, verdict=metrics["verdict"])
    return metrics


def _horizon_record(test: Sequence[Trajectory], cfg: FewShotConfig) -> dict:
    """The scored snapshots, resolved (the default target is the last snapshot)."""
    n_t = len(test[0].u)
    h = resolve_horizon(n_t, cfg.input_index, cfg.target_index, cfg.lead_time)
    return {"mode": cfg.mode, **h.to_dict(), "lead_time": h.span / (n_t - 1)}


def _verdicts(results: dict, curves: dict, zero_shot: dict, still: float, shots: list[int]) -> dict:
    """The report's first line: pretrained against scratch (paired over seeds), candidates against persistence.

    Persistence is judged at every shot count (with the zero-shot score as one more candidate); the
    pretrained method compared with scratch is the best one at the largest shot count.
    """
    zs = zero_shot.get("summary", {}).get(HEADLINE, {}).get("median")
    per_n = {}
    for n in shots:
        errors = {name: curve[n] for name, curve in curves.items()}
        if zs is not None:
            errors["zero-shot"] = zs
        per_n[n] = versus_persistence(errors, still)
    headline = per_n[shots[-1]]
    if all(v["none_better"] for v in per_n.values()):
        headline = dict(headline, line=headline["line"] + " at every shot count")
    lines = [headline["line"]]
    versus = {}
    methods = [m for m in study_methods() if m in curves]
    if methods and SCRATCH in curves:
        n = shots[-1]
        best = min(methods, key=lambda m: curves[m][n] if np.isfinite(curves[m][n]) else np.inf)
        per_seed = {
            m: {s: r["summary"][HEADLINE]["median"] for s, r in results[m][n]["seeds"].items()}
            for m in (best, SCRATCH)
        }
        versus = pretrained_vs_scratch(per_seed[best], per_seed[SCRATCH], method=best, where=f"{n} shots")
        lines.insert(0 if not headline["none_better"] else 1, versus["line"])
    return {
        "verdict": "; ".join(lines),
        "versus_persistence": {str(n): v for n, v in per_n.items()},
        "pretrained_vs_scratch": versus,
    }


def _gains(curves: dict, shots: list[int]) -> dict:
    """AG and EG of every other candidate over FNO at S = the largest shot count (when FNO was run)."""
    if "fno" not in curves:
        return {"accuracy_gain_over_fno": {}, "efficiency_gain_over_fno": {}, "gain_samples": None}
    fno = curves["fno"]
    ag, eg = {}, {}
    for name, curve in curves.items():
        if name == "fno" or not all(np.isfinite(v) and v > 0 for v in [*curve.values(), *fno.values()]):
            continue
        ag[name] = accuracy_gain(curve, fno, samples=shots[-1])
        eg[name] = efficiency_gain(curve, fno, samples=shots[-1]).to_dict()
    return {"accuracy_gain_over_fno": ag, "efficiency_gain_over_fno": eg, "gain_samples": shots[-1]}


def _figures(results: dict, keep: dict[str, Forecast], shots: list[int], out: Path) -> dict[str, Path]:
    curves = {
        name: {n: (results[name][n]["mean"][HEADLINE], results[name][n]["std"][HEADLINE]) for n in shots}
        for name in results
    }
    figs = {
        "curve": plots.plot_curves(
            curves,
            out / "few_shot_curve.png",
            xlabel="training trajectories",
            ylabel="median relative L1 error",
            title="few-shot error (mean +- std over seeds)",
        )
    }
    spectra = {}
    for name, fc in keep.items():
        pred, target = _last(fc)
        figs[f"fields_{name}"] = plots.plot_fields(
            pred[0],
            target[0],
            fc.fields,
            out / f"fields_{name}.png",
            f"{name}, {shots[-1]} trajectories, test sample 0",
        )
        spectra[name] = radial_error_spectrum(pred, target)
    figs["spectra"] = plots.plot_spectra(
        spectra, out / "error_spectra.png", f"error spectra at {shots[-1]} trajectories"
    )
    return figs


def _lr_scales(results: dict) -> str:
    """Each candidate's learning-rate scale(s), as used (1 = its recipe's rates)."""
    used = {
        name: sorted(
            {run["train"]["lr_scale"] for point in points.values() for run in point["seeds"].values()}
        )
        for name, points in results.items()
    }
    return ", ".join(f"{name} {'/'.join(fmt(v, 3) for v in scales)}" for name, scales in used.items())


def _sections(metrics: dict, results: dict, shots: list[int], figs: dict[str, Path], out: Path) -> list:
    cfg, h = metrics["config"], metrics["horizon"]
    setup = "\n".join(
        [
            f"- data: `{metrics['data']}` ({metrics['n_trajectories']} trajectories, fields {metrics['fields']})",
            f"- checkpoint: `{metrics['model']}`",
            f"- shots {shots}, seeds {cfg['seeds']}, {cfg['n_val']} validation and {cfg['n_test']} fixed test "
            f"trajectories, evaluation `{h['mode']}` from snapshot {h['input_index']} to snapshot "
            f"{h['target_index']} (lead time {fmt(h['lead_time'], 3)} of the span)",
            f"- budget (every candidate): {cfg['budget']}",
            f"- learning-rate scales: {_lr_scales(results)}",
            f"- environment: {metrics['environment']}",
        ]
    )
    rows = [
        [name]
        + [
            f"{fmt(results[name][n]['mean'][HEADLINE])} ± {fmt(results[name][n]['std'][HEADLINE], 2)}"
            for n in shots
        ]
        for name in results
    ]
    zs = metrics["zero_shot"]
    if "summary" in zs:
        rows.append(["zero-shot (checkpoint as is)"] + [fmt(zs["summary"][HEADLINE]["median"])] * len(shots))
    elif "unavailable" in zs:
        rows.append(["zero-shot (checkpoint as is)"] + ["n/a"] * len(shots))
    rows.append(["persistence (input as prediction)"] + [fmt(metrics["persistence"][HEADLINE])] * len(shots))
    curve_text = table(["candidate"] + [f"N={n}" for n in shots], rows)
    if "unavailable" in zs:
        curve_text += f"\n\nZero-shot unavailable: {zs['unavailable']}"
    all_metrics = table(
        ["candidate", *METRICS],
        [[name] + [results[name][shots[-1]]["mean"][m] for m in METRICS] for name in results]
        + [["persistence"] + [metrics["persistence"]["summary"][m]["median"] for m in METRICS]],
    )
    sections = [
        ("Setup", setup),
        ("Median relative L1 error against trajectories (mean ± std over seeds)", curve_text),
        (f"All metrics at N={shots[-1]} (median over test samples, mean over seeds)", all_metrics),
    ]
    if metrics["lr_search"]:
        search = [
            [name, n, choice["scale"], ", ".join(f"{k}: {fmt(v, 3)}" for k, v in choice["val_loss"].items())]
            for name, by_n in metrics["lr_search"].items()
            for n, choice in by_n.items()
        ]
        sections.append(
            (
                "Learning rates chosen on the validation split",
                table(["candidate", "N", "factor", "best validation loss per factor"], search)
                + "\n\nA factor scales the candidate's own rates (a method's groups together, a baseline's "
                "budget lr); it is chosen on the first seed's validation trajectories and used for every seed.",
            )
        )
    versus = metrics["pretrained_vs_scratch"]
    if versus.get("mean") is not None:
        per_seed = ", ".join(
            f"seed {s}: {100 * v:+.0f}%" for s, v in versus["relative_change_per_seed"].items()
        )
        sections.append(
            (
                "Pretrained against scratch",
                f"{versus['line']}.\n\nError change of `{versus['method']}` relative to scOT from scratch "
                f"(same architecture, random weights, same shots, budget and test set) per seed: {per_seed}.",
            )
        )
    if metrics["accuracy_gain_over_fno"]:
        s = metrics["gain_samples"]
        gains = table(
            ["candidate", f"AG_{s} over FNO", f"EG_{s} over FNO", "matching s", "how"],
            [
                [
                    name,
                    metrics["accuracy_gain_over_fno"][name],
                    eg["gain"],
                    eg["matching_samples"],
                    eg["note"],
                ]
                for name, eg in metrics["efficiency_gain_over_fno"].items()
            ],
        )
        note = (
            "\n\nFNO is 1/1 by definition; AG_S = E_S(FNO)/E_S(model), EG_S = S/s with E_s(model) = E_S(FNO)."
        )
        sections.append(("Accuracy and efficiency gains over FNO (Poseidon eq. 11)", gains + note))
    pictures = [figure(figs["curve"], out, "few-shot curve"), figure(figs["spectra"], out, "error spectra")]
    pictures += [figure(p, out, k) for k, p in figs.items() if k.startswith("fields_")]
    sections.append(("Figures", "\n\n".join(pictures)))
    return sections
