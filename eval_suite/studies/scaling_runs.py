"""Scaling laws across real pretraining runs: `pdefm eval scaling --runs A,B,C --axis model|data|families|compute`.

Each run's error is its last recorded downstream metric (``downstream/<task>/<metric>`` rows of its
metrics.jsonl, written by `pdefm pretrain --downstream`), averaged over the tasks every run recorded. Runs
without records are evaluated here on ``--evaluate SPEC`` tasks (the `--downstream` spec syntax), with the
zero-shot and few-shot code of the studies. Runs that share an axis value (seeds) form one point, mean ±
std; the law ``E = a x^-alpha + c`` is fitted through the points and, when the runs vary both parameters and
trajectories, ``E(N, D) = a N^-alpha + b D^-beta + c`` through the runs. A run that differs from the others
in more than the chosen axis (say, a wider model that also saw more data) is flagged, in the table and the
figure. ``--axis compute`` plots every run's downstream error against its training FLOPs and marks the
frontier. Every report shows each run's downstream curve against training steps.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.atomic import write_text_atomic
from data_pipelines.normalization import Normalizer
from eval_suite import plots
from eval_suite.protocol import forecast, persistence, score
from eval_suite.report import environment, figure, fmt, json_safe, table, write_report
from eval_suite.runs import RunRecord, RunRecordError, load_run
from eval_suite.scaling import compute_frontier, fit_joint_law, fit_power_law
from eval_suite.studies.candidates import Budget, fit_candidate, pretrained_operator
from foundation.configuration_scot import ScOTConfig
from foundation.pretrain.downstream import (
    DownstreamSpec,
    load_task_trajectories,
    metric_key,
    parse_downstream,
)

AXES = {
    "model": ("parameters", "parameters", "N"),
    "data": ("trajectories", "pretraining trajectories", "D"),
    "families": ("n_families", "pretraining families", "F"),
    "compute": ("flops", "training FLOPs", "C"),
}
"""axis: (run attribute, label, symbol in the law)."""
CONTROLLED = {
    "model": ("trajectories", "families", "examples"),
    "data": ("parameters", "families", "examples"),
    "families": ("parameters", "examples", "trajectories_per_family"),
    "compute": (),
}
"""What must not change between runs for a point to measure its axis alone (FLOPs follow from these)."""


@dataclass
class RunsScalingConfig:
    """The axis, the downstream tasks and metric that give each run's error, and the fit's options."""

    axis: str = "model"
    tasks: list[str] | None = None
    """Downstream task names (`<name>.<mode>`); default: every task all runs recorded."""
    metric: str = "rel_l1"
    evaluate: list[str] = field(default_factory=list)
    """`--downstream`-style specs to evaluate runs that recorded none."""
    bootstrap: int = 0
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def _attribute(run: RunRecord, name: str):
    if name == "trajectories_per_family":
        return run.trajectories / run.n_families if run.trajectories and run.n_families else None
    value = getattr(run, name)
    return tuple(value) if isinstance(value, list) else value


def evaluate_run(run: RunRecord, spec: DownstreamSpec, device: str = "auto") -> dict[str, float]:
    """Metric rows of `run`'s final model on every mode of `spec`, with the studies' zero/few-shot code.

    Zero-shot normalises with the evaluation set's own statistics (a run's model folder keeps no corpus
    statistics); few-shot fine-tunes the whole model (`full`) on N trajectories for `spec.steps` steps.
    """
    resolution = ScOTConfig.from_pretrained(run.model_dir).image_size
    most = max(spec.shots(m) for m in spec.modes)
    trajs = load_task_trajectories(spec, resolution, limit=spec.trajectories + most + (1 if most else 0))
    test, rest = trajs[: spec.trajectories], trajs[spec.trajectories :]
    if len(test) < spec.trajectories or len(rest) < most + (1 if most else 0):
        raise ValueError(
            f"--evaluate {spec.source!r}: {len(trajs)} trajectories; {spec.trajectories} test + {most} shots + 1 "
            "validation needed"
        )
    horizon = dict(input_index=spec.input_index, target_index=spec.target_index, lead_time=spec.lead_time)
    still = score(persistence(test, **horizon))[0]["rel_l1"]["median"]
    row = {}
    for mode in spec.modes:
        n = spec.shots(mode)
        if n == 0:
            op = pretrained_operator(str(run.model_dir), test[0].fields, Normalizer.from_trajectories(test))
        else:
            budget = Budget(epochs=10**6, max_steps=spec.steps, batch_size=8, device=device)
            op, _ = fit_candidate(
                "full", rest[:n], rest[-1:], budget=budget, seed=spec.seed, model=str(run.model_dir)
            )
        summary = score(forecast(op, test, **horizon))[0]
        task = spec.task(mode)
        row[metric_key(task, "rel_l1")] = summary["rel_l1"]["median"]
        row[metric_key(task, "rel_l1_mean")] = summary["rel_l1"]["mean"]
        row[metric_key(task, "persistence_rel_l1")] = still
    return row


def _evaluate_missing(runs: list[RunRecord], cfg: RunsScalingConfig, out: Path, log) -> dict[str, list[str]]:
    """Evaluate runs without downstream records on `cfg.evaluate` specs (cached in out/evaluations.json)."""
    specs = [parse_downstream(s) for s in cfg.evaluate]
    cache_path = out / "evaluations.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    evaluated: dict[str, list[str]] = {}
    for run in runs:
        if run.tasks(cfg.metric) or not specs:
            continue
        row = {}
        for spec_text, spec in zip(cfg.evaluate, specs, strict=True):
            key = f"{Path(run.source).resolve() if Path(run.source).exists() else run.source} | {spec_text}"
            if key not in cache:
                log(f"scaling: evaluating {run.label} on {spec_text!r}")
                cache[key] = evaluate_run(run, spec, cfg.device)
                write_text_atomic(cache_path, json.dumps(json_safe(cache), indent=1))
            row.update(cache[key])
        run.rows.append({"step": run.steps or 0, "flops": run.flops, "evaluated_by": "eval scaling", **row})
        evaluated[run.label] = [t for s in specs for t in s.tasks()]
    return evaluated


def _tasks(runs: list[RunRecord], cfg: RunsScalingConfig) -> list[str]:
    if cfg.tasks:
        for run in runs:
            missing = [t for t in cfg.tasks if t not in run.tasks(cfg.metric)]
            if missing:
                raise RunRecordError(
                    f"run {run.label}: no downstream/{missing[0]}/{cfg.metric} records; it has {run.tasks(cfg.metric)}"
                )
        return list(cfg.tasks)
    common = [t for t in runs[0].tasks(cfg.metric) if all(t in r.tasks(cfg.metric) for r in runs)]
    if not common:
        have = {r.label: r.tasks(cfg.metric) for r in runs}
        raise RunRecordError(
            f"scaling: the runs share no downstream task with {cfg.metric!r} records ({have}); pretrain them with "
            "--downstream SPEC, or pass --evaluate SPEC to evaluate their final models here"
        )
    return common


def _unique_labels(runs: list[RunRecord]) -> None:
    counts = Counter(r.label for r in runs)
    for run in runs:
        if counts[run.label] > 1:
            run.label = run.source


def _flags(runs: list[RunRecord], axis: str) -> dict[str, list[str]]:
    """Per run, how it differs from the majority of runs in what the axis holds fixed."""
    flags: dict[str, list[str]] = {}
    for name in CONTROLLED[axis]:
        values = [_attribute(r, name) for r in runs]
        known = [v for v in values if v is not None]
        if not known:
            continue
        usual, _ = Counter(known).most_common(1)[0]
        for run, value in zip(runs, values, strict=True):
            if value is not None and value != usual:
                flags.setdefault(run.label, []).append(f"{name} {_show(value)} (others {_show(usual)})")
    return flags


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return fmt(float(value), 3) if isinstance(value, float) else str(value)


def run_scaling_runs(
    sources: Sequence[str],
    out: str | Path,
    *,
    config: RunsScalingConfig | None = None,
    labels: Sequence[str] | None = None,
    context: dict | None = None,
    references: dict[str, dict] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Fit the runs' downstream error along `config.axis`; writes report.md, metrics.json and figures to `out`.

    `labels` name the runs in tables and figures; `context` (how the runs were made, when known) goes into
    the report's setup and metrics.json; `references` ({name: {seed: metric rows}}, e.g. the architecture
    untrained) are scored like the runs and drawn beside them.
    """
    cfg = config or RunsScalingConfig()
    if cfg.axis not in AXES:
        raise ValueError(f"scaling: --axis must be one of {sorted(AXES)}, got {cfg.axis!r}")
    if len(sources) < 2:
        raise ValueError(f"scaling: --runs needs at least 2 runs, got {len(sources)}")
    attr, xlabel, symbol = AXES[cfg.axis]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(s, label) for s, label in zip(sources, labels or [None] * len(sources), strict=True)]
    _unique_labels(runs)
    evaluated = _evaluate_missing(runs, cfg, out, log)
    tasks = _tasks(runs, cfg)

    per_run = {}
    for run in runs:
        x = _attribute(run, attr)
        if x is None:
            raise RunRecordError(
                f"run {run.label}: records no {attr} (train_summary.json / metrics.jsonl), needed for --axis {cfg.axis}"
            )
        last = {t: run.curve(t, cfg.metric)[-1][2] for t in tasks}
        still = [run.curve(t, "persistence_rel_l1") for t in tasks]
        per_run[run.label] = {
            **run.summary(),
            "x": float(x),
            "error": float(np.mean(list(last.values()))),
            "per_task": last,
            "persistence": float(np.mean([c[-1][2] for c in still])) if all(still) else None,
            "evaluated_here": run.label in evaluated,
        }
    flags = _flags(runs, cfg.axis)

    points: dict[float, dict] = {}
    for label, r in per_run.items():
        points.setdefault(r["x"], {"runs": [], "errors": []})
        points[r["x"]]["runs"].append(label)
        points[r["x"]]["errors"].append(r["error"])
    for p in points.values():
        p["mean"], p["std"] = float(np.mean(p["errors"])), float(np.std(p["errors"]))
    xs = sorted(points)
    law, fit = None, {}
    try:  # through every run, so that seeds count as replicates in the intervals
        law = fit_power_law(
            [r["x"] for r in per_run.values()],
            [r["error"] for r in per_run.values()],
            with_offset=len(xs) >= 4,
            bootstrap=cfg.bootstrap,
        )
        fit = law.to_dict()
    except (ValueError, RuntimeError) as err:
        fit = {"unavailable": str(err)}
    joint = _joint(runs, per_run, cfg)
    levels = _reference_levels(references or {}, tasks, cfg.metric)

    figs = {
        "scaling": plots.plot_scaling(
            {x: (points[x]["mean"], points[x]["std"]) for x in xs},
            out / f"scaling_{cfg.axis}.png",
            xlabel=xlabel,
            title=f"downstream {cfg.metric} against {xlabel} ({len(runs)} runs)",
            fit=law,
            flagged=[per_run[label]["x"] for label in flags],
            ylabel=f"downstream {cfg.metric}",
            references={**_persistence_level(per_run), **levels},
            runs={x: p["errors"] for x, p in points.items()},
        ),
        "curves": _curves_figure(runs, tasks, cfg.metric, out, {**_persistence_level(per_run), **levels}),
    }
    frontier = None
    if cfg.axis == "compute":
        frontier, figs["frontier"] = _frontier(runs, tasks, cfg.metric, out)

    metrics = {
        "study": "scaling-runs",
        "axis": cfg.axis,
        "x": xlabel,
        "symbol": symbol,
        "tasks": tasks,
        "metric": cfg.metric,
        "headline": f"{cfg.metric}: each run's last downstream record, mean over tasks; points: mean ± std over "
        "runs; the law is fitted through every run",
        "config": cfg.to_dict(),
        "runs": per_run,
        "evaluated_here": evaluated,
        "flags": flags,
        "points": points,
        "fit": fit,
        "joint_fit": joint,
        "frontier": frontier,
        "references": {"levels": levels, "per_seed": references or {}},
        "context": context or {},
        "environment": environment(),
    }
    metrics["verdict"] = _verdict(metrics)
    write_report(
        out,
        f"Scaling across runs: {cfg.axis}",
        _sections(metrics, figs, out),
        metrics,
        verdict=metrics["verdict"],
    )
    return metrics


def _reference_levels(references: dict[str, dict], tasks: list[str], metric: str) -> dict[str, float]:
    """Each reference's error as the runs' is taken: mean over tasks, then over its seeds."""
    return {
        name: float(
            np.mean([np.mean([rows[metric_key(t, metric)] for t in tasks]) for rows in by_seed.values()])
        )
        for name, by_seed in references.items()
    }


def _joint(runs: list[RunRecord], per_run: dict, cfg: RunsScalingConfig) -> dict:
    """E(N, D) through the runs when they vary both parameters and trajectories."""
    n = [r.parameters for r in runs]
    d = [r.trajectories for r in runs]
    if None in d or len(set(n)) < 2 or len(set(d)) < 2:
        return {"unavailable": "the runs do not vary both parameters and trajectories"}
    try:
        return fit_joint_law(
            n, d, [per_run[r.label]["error"] for r in runs], bootstrap=cfg.bootstrap
        ).to_dict()
    except (ValueError, RuntimeError) as err:
        return {"unavailable": str(err)}


def _persistence_level(per_run: dict) -> dict[str, float]:
    """Persistence's error on the tasks (one fixed test set: the same for every run), for the figures."""
    levels = [r["persistence"] for r in per_run.values() if r["persistence"] is not None]
    return {"persistence (input as prediction)": float(np.mean(levels))} if levels else {}


def _curves_figure(
    runs: list[RunRecord], tasks: list[str], metric: str, out: Path, references: dict[str, float]
) -> Path:
    """Each run's downstream error (mean over tasks) against training step, persistence dashed."""
    series = {}
    for run in runs:
        curves = [dict((s, v) for s, _, v in run.curve(t, metric)) for t in tasks]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        series[run.label] = (steps, [float(np.mean([c[s] for c in curves])) for s in steps])
    return plots.plot_lines(
        series,
        out / "downstream_curves.png",
        xlabel="pretraining step",
        ylabel=f"downstream {metric}",
        title=f"downstream {metric} during pretraining ({', '.join(tasks)})",
        references=references if metric == "rel_l1" else None,
    )


def _frontier(runs: list[RunRecord], tasks: list[str], metric: str, out: Path) -> tuple[dict, Path]:
    """Every run's error against cumulative training FLOPs, and the frontier over all their records."""
    series, all_points = {}, []
    for run in runs:
        curves = [{s: (f, v) for s, f, v in run.curve(t, metric)} for t in tasks]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        pts = [(curves[0][s][0], float(np.mean([c[s][1] for c in curves]))) for s in steps]
        pts = [(f, v) for f, v in pts if f]
        series[run.label] = ([f for f, _ in pts], [v for _, v in pts])
        all_points += [(f, v, run.label) for f, v in pts]
    if not all_points:
        raise RunRecordError("scaling --axis compute: no run recorded FLOPs beside its downstream metrics")
    keep = compute_frontier([p[0] for p in all_points], [p[1] for p in all_points])
    front = [all_points[i] for i in keep]
    path = plots.plot_lines(
        series,
        out / "compute_frontier.png",
        xlabel="training FLOPs",
        ylabel=f"downstream {metric}",
        title="downstream error against compute; black: the frontier",
        logx=True,
        frontier=([p[0] for p in front], [p[1] for p in front]),
    )
    return {"points": [{"flops": f, "error": v, "run": label} for f, v, label in front]}, path


def _law_text(fit: dict, x: str = "x") -> str:
    if "unavailable" in fit:
        return f"unavailable: {fit['unavailable']}"
    ci = fit["ci"]
    level = int(fit["confidence"] * 100)
    if "beta" in fit:
        text = (
            f"E = {fmt(fit['a'])} N^-{fmt(fit['alpha'])} + {fmt(fit['b'])} D^-{fmt(fit['beta'])} + {fmt(fit['c'])}; "
            f"alpha {level}% CI [{fmt(ci['alpha'][0])}, {fmt(ci['alpha'][1])}], beta [{fmt(ci['beta'][0])}, "
            f"{fmt(ci['beta'][1])}]"
        )
    else:
        text = (
            f"E = {fmt(fit['a'])} {x}^-{fmt(fit['alpha'])} + {fmt(fit['c'])}; alpha {level}% CI "
            f"[{fmt(ci['alpha'][0])}, {fmt(ci['alpha'][1])}]"
        )
    return text + f" ({fit['method']}); R^2 = {fmt(fit['r2'])}" + "".join(f"\n- {n}" for n in fit["notes"])


def _verdict(m: dict) -> str:
    """First line: the exponent with its interval, how many runs are confounded, and persistence."""
    fit, n_runs = m["fit"], len(m["runs"])
    if "unavailable" in fit:
        line = f"no {m['axis']} law from {n_runs} runs ({fit['unavailable']})"
    else:
        lo, hi = fit["ci"]["alpha"]
        interval = f" [{fmt(lo, 2)}, {fmt(hi, 2)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        line = (
            f"downstream {m['metric']} ~ {m['symbol']}^-{fmt(fit['alpha'], 2)}{interval} with {m['symbol']} the {m['x']} "
            f"(R^2 {fmt(fit['r2'], 2)}) over {n_runs} runs at {len(m['points'])} values of {m['symbol']}"
        )
    if m["flags"]:
        line += f"; {len(m['flags'])} run(s) differ in more than {m['axis']} (flagged)"
    for name, level in m["references"]["levels"].items():
        best = min(m["points"].items(), key=lambda kv: kv[1]["mean"])
        line += f"; best point {fmt(best[1]['mean'], 3)} ({m['symbol']} = {fmt(best[0], 3)}) against {fmt(level, 3)} {name}"
    still = [(r["error"], r["persistence"]) for r in m["runs"].values() if r["persistence"] is not None]
    if still and all(e >= p for e, p in still):
        line += "; no run beats persistence (the input as the prediction) on these tasks"
    return line


def _sections(m: dict, figs: dict, out: Path) -> list[tuple[str, str]]:
    rows = []
    for label, r in m["runs"].items():
        rows.append(
            [
                label,
                r["parameters"],
                r["trajectories"],
                len(r["families"]),
                r["flops"],
                r["steps"],
                r["error"],
                r["persistence"],
                "; ".join(m["flags"].get(label, [])) or "-",
            ]
        )
    headers = [
        "run",
        "parameters",
        "trajectories",
        "families",
        "FLOPs",
        "steps",
        "error",
        "persistence",
        "flag",
    ]
    runs_text = table(headers, rows)
    if m["evaluated_here"]:
        runs_text += (
            "\n\nEvaluated here (no downstream records in the run): "
            + ", ".join(m["evaluated_here"])
            + f" on {m['config']['evaluate']}; zero-shot normalises with the evaluation set's own statistics."
        )
    if m["flags"]:
        runs_text += (
            f"\n\nFlagged runs differ from the majority in what the `{m['axis']}` axis holds fixed "
            f"({', '.join(CONTROLLED[m['axis']])}); their points mix two effects."
        )
    point_rows = [[x, ", ".join(p["runs"]), p["mean"], p["std"]] for x, p in sorted(m["points"].items())]
    setup = f"- axis `{m['axis']}` ({m['symbol']} = {m['x']}), tasks {m['tasks']}, metric `{m['metric']}`\n- {m['headline']}"
    setup += "".join(f"\n- {k}: {v}" for k, v in m["context"].items())
    sections = [
        ("Setup", setup),
        ("Runs", runs_text),
        ("Points", table([m["x"], "runs", "error (mean)", "std over runs"], point_rows)),
        ("Power-law fit", _law_text(m["fit"], m["symbol"])),
        ("Joint fit E(N, D)", _law_text(m["joint_fit"])),
    ]
    if m["references"]["levels"]:
        refs = "\n".join(
            f"- {name}: {fmt(level)} (per seed: "
            + ", ".join(
                f"{seed} {fmt(float(np.mean([rows[metric_key(t, m['metric'])] for t in m['tasks']])))}"
                for seed, rows in m["references"]["per_seed"][name].items()
            )
            + ")"
            for name, level in m["references"]["levels"].items()
        )
        sections.append(("References", refs))
    if m["frontier"]:
        front = table(
            ["FLOPs", "error", "run"], [[p["flops"], p["error"], p["run"]] for p in m["frontier"]["points"]]
        )
        sections.append(("Compute frontier", front))
    pictures = [figure(p, out, k) for k, p in figs.items()]
    sections.append(("Figures", "\n\n".join(pictures)))
    return sections
