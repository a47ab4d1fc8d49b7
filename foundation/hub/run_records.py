"""A pretraining run's records as a model card reads them: downstream error by step and its place among
sibling runs (same recipe, other sizes, data or families)."""

from __future__ import annotations

import json
import math
from pathlib import Path

DOWNSTREAM = "downstream/"
ERROR = "/rel_l1"


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (empty when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def downstream_curves(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{task: [(step, median relative L1), ...]} of every downstream task a run recorded."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(DOWNSTREAM) and key.endswith(ERROR):
                curves.setdefault(key[len(DOWNSTREAM) : -len(ERROR)], []).append((row["step"], value))
    return curves


def run_record(source: str) -> dict:
    """Name, parameters, trajectories, families, FLOPs and final downstream errors of a run folder, a model
    folder or a Hub model id (its train_summary.json and metrics.jsonl)."""
    path = Path(source)
    if path.is_dir():
        folder = path if (path / "train_summary.json").is_file() else path / "model"
        summary_file, metrics_file = folder / "train_summary.json", folder / "metrics.jsonl"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        summary_file = Path(hf_hub_download(source, "train_summary.json"))
        try:
            metrics_file = Path(hf_hub_download(source, "metrics.jsonl"))
        except EntryNotFoundError:
            metrics_file = Path("/nonexistent")
    if not summary_file.is_file():
        raise FileNotFoundError(f"{source}: no train_summary.json (not a pdefm pretraining run)")
    summary = json.loads(summary_file.read_text())
    curves = downstream_curves(read_rows(metrics_file))
    return {
        "name": source,
        "parameters": summary.get("parameters"),
        "trajectories": summary.get("trajectories"),
        "families": len(summary.get("families") or {}),
        "flops": summary.get("flops"),
        "downstream": {task: points[-1][1] for task, points in curves.items()},
    }


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def downstream_section(rows: list[dict]) -> str:
    """Markdown: the downstream error (median relative L1) of each task at each evaluated step."""
    curves = downstream_curves(rows)
    if not curves:
        return ""
    tasks = sorted(curves)
    steps = sorted({s for points in curves.values() for s, _ in points})
    lookup = {t: dict(curves[t]) for t in tasks}
    lines = [
        "## Downstream error during pretraining",
        "",
        "Median relative L1 on held-out tasks (`pdefm pretrain --downstream`), as the run trained:",
        "",
        "| step | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    lines += [f"| {s} | " + " | ".join(_fmt(lookup[t].get(s)) for t in tasks) + " |" for s in steps]
    return "\n".join(lines) + "\n"


def siblings_section(this: dict, siblings: list[dict]) -> str:
    """Markdown: this model among its sibling runs, ordered by parameters, with each task's final error
    and this model's rank on it (1 = lowest error)."""
    runs = sorted([this, *siblings], key=lambda r: (r["parameters"] or 0, r["name"]))
    tasks = sorted({t for r in runs for t in r["downstream"]})
    if not tasks:
        return ""
    lines = [
        "## Scaling position among sibling runs",
        "",
        "| run | parameters | trajectories | families | FLOPs | " + " | ".join(tasks) + " |",
        "|---|---|---|---|---|" + "---|" * len(tasks),
    ]
    for r in runs:
        name = f"**{r['name']} (this model)**" if r is this else r["name"]
        errors = " | ".join(_fmt(r["downstream"].get(t)) for t in tasks)
        lines.append(
            f"| {name} | {r['parameters']} | {r['trajectories']} | {r['families']} | {_fmt(r['flops'])} | {errors} |"
        )
    ranks = []
    for t in tasks:
        scored = sorted(r["downstream"][t] for r in runs if t in r["downstream"])
        if t in this["downstream"]:
            ranks.append(f"{t}: {scored.index(this['downstream'][t]) + 1} of {len(scored)}")
    return "\n".join(lines) + "\n\nRank of this model (1 = lowest error): " + "; ".join(ranks) + ".\n"
