"""The dataset card (README.md) of a corpus: Hub YAML header plus families, distributions, counts, stats.

The YAML `configs` give one config per family and a `default` with all of them, so
`load_dataset(repo, name=family, streaming=True)` streams one family from the Hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml


def _yaml_header(families: Sequence[str]) -> str:
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*.parquet"}]}]
    configs += [
        {"config_name": f, "data_files": [{"split": "train", "path": f"data/{f}/*.parquet"}]}
        for f in families
    ]
    header = {"tags": ["pdefm", "pde", "physics", "scientific-ml"], "configs": configs}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _family_section(name: str, info: dict, registered) -> list[str]:
    lines = [f"### {name}", ""]
    if registered is not None:
        lines += [registered.description.strip(), ""]
        lines += ["| coefficient | range | distribution |", "|---|---|---|"]
        for k, (lo, hi) in registered.coefficient_ranges.items():
            dist = "log-uniform" if k in registered.log_coefficients else "uniform"
            lines.append(f"| {k} | [{lo:g}, {hi:g}] | {dist} |")
        lines.append("")
    shape = info["shape"]
    lines += [
        f"- trajectories: {info['count']} in {len(info['shards'])} shard(s); u shape [T, C, H, W] = {shape}",
        f"- fields: {', '.join(info['fields'])}; bc: {info['bc']}; domain: {info['domain']}",
        f"- times: {info['t'][0]:g} .. {info['t'][-1]:g} ({len(info['t'])} snapshots)",
    ]
    if info["params"]:
        sampled = ", ".join(f"{k} in [{v['min']:.4g}, {v['max']:.4g}]" for k, v in info["params"].items())
        lines.append(f"- sampled coefficients: {sampled}")
    return lines + [""]


def write_card(root: Path, stats: dict, registry_families: Sequence | None = None) -> None:
    """Writes README.md from the corpus statistics (and the families' documented distributions)."""
    registered = {f.name: f for f in registry_families or []}
    families = list(stats["families"])
    lines = [
        "# pdefm PDE corpus",
        "",
        f"{stats['count']} trajectories of {len(families)} PDE famil{'y' if len(families) == 1 else 'ies'}, "
        "written by `pdefm data`.",
        "",
        "## Families",
        "",
    ]
    for name in families:
        lines += _family_section(name, stats["families"][name], registered.get(name))
    skipped = sum(stats["skipped"].values())
    lines += [
        "## Counts",
        "",
        "| family | trajectories |",
        "|---|---|",
        *[f"| {n} | {stats['families'][n]['count']} |" for n in families],
        "",
        f"Trajectories skipped as invalid (NaN/Inf): {skipped}.",
        "",
        "## Per-field statistics (normalisation, also in `stats.json`)",
        "",
        "| field | mean | std | min | max |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['mean']:.6g} | {v['std']:.6g} | {v['min']:.6g} | {v['max']:.6g} |"
            for k, v in stats["fields"].items()
        ],
        "",
        "## Schema",
        "",
        "One row per trajectory: `id`, `pde`, `fields` (C names), `shape` [T, C, H, W], `u` (raw little-endian",
        "float32 bytes: `np.frombuffer(u, '<f4').reshape(shape)`), `t` [T], `params` (JSON), `bc`, `domain`",
        "(x_min, x_max, y_min, y_max).",
        "",
        "```python",
        "from data_pipelines.corpus import load_trajectories",
        "from data_pipelines.streaming import MixtureStream",
        "```",
        "",
    ]
    (root / "README.md").write_text(_yaml_header(families) + "\n" + "\n".join(lines))
