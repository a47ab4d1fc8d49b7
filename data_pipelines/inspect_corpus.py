"""`pdefm data inspect`: a summary table of a corpus and a preview PNG of snapshots per family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from data_pipelines.corpus import CorpusError, corpus_shards, read_shard


def summary_table(root: Path) -> Table:
    stats_path = root / "stats.json"
    if not stats_path.exists():
        raise CorpusError(f"{root}: stats.json missing, not a finished pdefm corpus")
    stats = json.loads(stats_path.read_text())
    table = Table(title=f"{root}: {stats['count']} trajectories")
    for col in ("family", "trajectories", "shards", "u [T,C,H,W]", "fields", "t range", "coefficients"):
        table.add_column(col)
    for name, info in stats["families"].items():
        coeffs = ", ".join(f"{k} [{v['min']:.3g}, {v['max']:.3g}]" for k, v in info["params"].items())
        table.add_row(
            name,
            str(info["count"]),
            str(len(info["shards"])),
            str(info["shape"]),
            ",".join(info["fields"]),
            f"{info['t'][0]:g}..{info['t'][-1]:g}",
            coeffs or "-",
        )
    return table


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
    root = Path(root)
    (console or Console()).print(summary_table(root))
    return preview_png(root, Path(png) if png else root / "preview.png")
