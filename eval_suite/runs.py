"""What a pretraining run recorded: its size, data, families, compute and downstream error over training.

A run is a `pdefm pretrain` output folder (``train_summary.json``, ``training_args.json``,
``metrics.jsonl`` and ``model/``), its ``model/`` folder alone, or a Hub model id (the pushed model folder).
The scaling study reads every run through `load_run`, so runs from a cluster, a laptop or the Hub compare
on the same figures: parameters, pretraining trajectories, families, training FLOPs and examples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundation.pretrain.downstream import PREFIX

METRICS_FILE = "metrics.jsonl"


class RunRecordError(ValueError):
    """A run that cannot be read: the message names the run, the file and what is missing."""


@dataclass
class RunRecord:
    """One pretraining run as the scaling study sees it (None: the run did not record it)."""

    source: str
    label: str
    model_dir: Path
    parameters: int
    trajectories: int | None
    families: list[str]
    flops: float | None
    examples: int | None
    steps: int | None
    args: dict
    rows: list[dict] = field(default_factory=list)
    """metrics.jsonl rows (step, flops, examples, wall_s, train/..., downstream/<task>/<metric>)."""

    @property
    def n_families(self) -> int:
        return len(self.families)

    def tasks(self, metric: str = "rel_l1") -> list[str]:
        """Downstream tasks with `metric` records, in first-logged order."""
        seen = {}
        for row in self.rows:
            for key in row:
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == PREFIX and parts[2] == metric:
                    seen[parts[1]] = None
        return list(seen)

    def curve(self, task: str, metric: str = "rel_l1") -> list[tuple[int, float | None, float]]:
        """(step, cumulative FLOPs, value) of every record of `task`'s `metric`, in step order."""
        key = f"{PREFIX}/{task}/{metric}"
        points = {}
        for row in self.rows:
            value = row.get(key)
            if value is not None and math.isfinite(value):
                points[int(row["step"])] = (row.get("flops"), float(value))
        return [(step, *points[step]) for step in sorted(points)]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "parameters": self.parameters,
            "trajectories": self.trajectories,
            "families": self.families,
            "flops": self.flops,
            "examples": self.examples,
            "steps": self.steps,
            "tasks": self.tasks(),
        }


def _read_json(path: Path, source: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise RunRecordError(f"run {source}: {path.name} is not valid JSON ({err})") from None


def read_metrics(path: Path, source: str) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a crash is skipped, any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if k == len(lines) - 1:
                break
            raise RunRecordError(f"run {source}: {path} line {k + 1} is not a JSON object") from None
        if not isinstance(row, dict) or "step" not in row:
            raise RunRecordError(f"run {source}: {path} line {k + 1} has no 'step'")
        rows.append(row)
    return rows


def _locate(source: str) -> tuple[Path, Path]:
    """(run folder, model folder) of a run folder, a model folder or a Hub model id."""
    path = Path(source)
    if path.exists():
        if (path / "model" / "config.json").exists():
            return path, path / "model"
        if (path / "config.json").exists():
            parent = path.parent
            return (parent if (parent / METRICS_FILE).exists() else path), path
        raise RunRecordError(
            f"run {source}: no config.json in it or in {path / 'model'}; expected a `pdefm pretrain` "
            "output folder, its model/ folder or a Hub model id"
        )
    if source.count("/") != 1:
        raise RunRecordError(f"run {source}: no such folder, and not a Hub model id (org/name)")
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.jsonl", "*.safetensors", "*.md"]))
    return folder, folder


def count_parameters(model_dir: Path) -> int:
    """Parameters of the model that config.json describes, built on the meta device (no memory, no weights)."""
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT

    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def _corpus_trajectories(args: dict, families: Sequence[str]) -> int | None:
    """Trajectories of the selected families in the run's local corpus folders (None if not all are local)."""
    total = 0
    for source in args.get("corpus") or []:
        stats = Path(source) / "stats.json"
        if not stats.exists():
            return None
        for name, info in json.loads(stats.read_text()).get("families", {}).items():
            if not families or name in families:
                total += int(info.get("trajectories", 0))
    return total or None


def load_run(source: str, label: str | None = None) -> RunRecord:
    """Read a run's records; falls back on what older runs kept (model config, corpus stats, examples_seen)."""
    run_dir, model_dir = _locate(str(source))
    summary = _read_json(run_dir / "train_summary.json", source) or _read_json(
        model_dir / "train_summary.json", source
    )
    args = _read_json(run_dir / "training_args.json", source) or _read_json(
        model_dir / "training_args.json", source
    )
    rows = read_metrics(run_dir / METRICS_FILE, source)
    last = rows[-1] if rows else {}
    families = summary.get("families") or args.get("families") or []
    families = sorted(families) if isinstance(families, (dict, list)) else [str(families)]
    trajectories = summary.get("trajectories")
    if trajectories is None:
        trajectories = _corpus_trajectories(args, families)
    examples = summary.get("examples", summary.get("examples_seen", last.get("examples")))
    return RunRecord(
        source=str(source),
        label=label or _label(str(source)),
        model_dir=model_dir,
        parameters=int(summary.get("parameters") or count_parameters(model_dir)),
        trajectories=int(trajectories) if trajectories is not None else None,
        families=families,
        flops=summary.get("flops", last.get("flops")),
        examples=int(examples) if examples is not None else None,
        steps=summary.get("steps", last.get("step")),
        args=args,
        rows=rows,
    )


def _label(source: str) -> str:
    """A short name for figures: the run folder's name (not `model`) or the Hub id."""
    path = Path(source)
    if path.exists():
        path = path.resolve()
        return path.parent.name if path.name == "model" else path.name
    return source
