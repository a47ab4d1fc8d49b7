"""`pdefm data inspect`: a summary table of a corpus with each family's health read from the files (shard
presence, sizes and footer row counts against stats.json), and a preview PNG of snapshots per family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from data_pipelines.corpus import (
    DATA_DIR,
    SHARD_GLOB,
    CorpusError,
    corpus_shards,
    manifest,
    read_shard,
    read_stats,
)


def corpus_health(root: Path, stats: dict) -> tuple[dict[str, dict], list[str]]:
    """Per family, what the files hold ({"shards", "rows"} from the parquet footers), and one line per
    problem: a listed shard missing, truncated, resized or with another row count, or a shard not listed."""
    listed = manifest(stats, str(root))
    found: dict[str, dict] = {}
    problems = []
    on_disk = {p for p in (root / DATA_DIR).glob(f"*/{SHARD_GLOB}") if not p.parent.name.startswith(".")}
    for family, shards in listed.items():
        found[family] = {"shards": 0, "rows": 0}
        for name, info in sorted(shards.items()):
            path = root / DATA_DIR / family / name
            on_disk.discard(path)
            if not path.exists():
                problems.append(f"{path}: missing (listed in stats.json)")
                continue
            try:
                rows = pq.read_metadata(path).num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                problems.append(f"{path}: unreadable parquet footer ({exc})")
                continue
            found[family]["shards"] += 1
            found[family]["rows"] += rows
            if path.stat().st_size != info["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes, stats.json records {info['bytes']}")
            if rows != info["rows"]:
                problems.append(f"{path}: {rows} rows, stats.json records {info['rows']}")
    problems += [f"{path}: shard not listed in stats.json" for path in sorted(on_disk)]
    return found, problems


def summary_table(root: Path) -> tuple[Table, list[str]]:
    """The table (counts from the files, the rest from stats.json) and the health problems found."""
    stats = read_stats(root)
    found, problems = corpus_health(root, stats)
    table = Table(title=f"{root}: {sum(f['rows'] for f in found.values())} trajectories in the files")
    columns = (
        "family",
        "trajectories",
        "shards",
        "u [T,C,H,W]",
        "fields",
        "t range",
        "coefficients",
        "health",
    )
    for col in columns:
        table.add_column(col)
    for name, info in stats["families"].items():
        coeffs = ", ".join(f"{k} [{v['min']:.3g}, {v['max']:.3g}]" for k, v in info["params"].items())
        bad = sum(f"/{DATA_DIR}/{name}/" in p for p in problems)
        table.add_row(
            name,
            f"{found[name]['rows']} of {info['count']}",
            f"{found[name]['shards']} of {len(info['shards'])}",
            str(info["shape"]),
            ",".join(info["fields"]),
            f"{info['t'][0]:g}..{info['t'][-1]:g}",
            coeffs or "-",
            "ok" if not bad else f"{bad} problem(s)",
        )
    return table, problems


def preview_png(root: Path, out: Path, columns: int = 5) -> Path:
    """One row per family: the first channel of its first trajectory at `columns` evenly spaced times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shards = corpus_shards(root)
    fig, axes = plt.subplots(len(shards), columns, figsize=(2 * columns, 2 * len(shards)), squeeze=False)
    for row, (family, paths) in enumerate(shards.items()):
        traj = read_shard(paths[0], limit=1)[0]
        times = np.linspace(0, traj.u.shape[0] - 1, columns).round().astype(int)
        lo, hi = float(traj.u[:, 0].min()), float(traj.u[:, 0].max())
        for col, k in enumerate(times):
            ax = axes[row, col]
            ax.imshow(traj.u[k, 0], origin="lower", cmap="RdBu_r", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={traj.t[k]:.3g}", fontsize=8)
        axes[row, 0].set_ylabel(f"{family}\n{traj.fields[0]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def inspect_corpus(root: str | Path, png: str | Path | None = None, console: Console | None = None) -> Path:
    """Prints the table and any health problems; writes the preview of a healthy corpus, else raises
    CorpusError naming the first problem (`pdefm data verify` also checks the hashes)."""
    root = Path(root)
    console = console or Console()
    table, problems = summary_table(root)
    console.print(table)
    for line in problems:
        console.print(line, style="red", markup=False, soft_wrap=True)
    if problems:
        raise CorpusError(f"{root}: {len(problems)} shard problem(s); first: {problems[0]}")
    return preview_png(root, Path(png) if png else root / "preview.png")
