"""A study's report folder: report.md (Markdown tables and figures) and metrics.json."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from data_pipelines.atomic import write_text_atomic


def json_safe(obj):
    """JSON-safe: NaN/inf become null (strict JSON has no NaN), tuples become lists, keys strings,
    anything else JSON cannot hold (a dtype, a path) its string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def fmt(value, digits: int = 4) -> str:
    """A number for a table cell; missing values show as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; cells go through `fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> dict:
    """Where the study ran, for the record."""
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.platform()}


def write_report(
    out: Path, title: str, sections: Sequence[tuple[str, str]], metrics: dict, verdict: str | None = None
) -> Path:
    """Writes `out/report.md` (title, then (heading, body) sections, figures linked relative) and metrics.json.

    `verdict`, the study's answer in one sentence, is the report's first line (above the title), so that
    `head -1 report.md` answers. Both files atomically, metrics.json last: its presence marks a finished study.
    """
    out = Path(out)
    body = [f"{verdict[:1].upper()}{verdict[1:]}.", ""] if verdict else []
    body += [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    path = write_text_atomic(out / "report.md", "\n".join(body))
    write_text_atomic(out / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    return path


def figure(path: Path, out: Path, caption: str) -> str:
    """A Markdown image link relative to the report folder."""
    return f"![{caption}]({Path(path).relative_to(out).as_posix()})"
