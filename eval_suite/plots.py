"""Report figures (matplotlib, Agg backend): field panels, error spectra, few-shot and scaling curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_fields(pred, target, fields: Sequence[str], path: Path, title: str = "") -> Path:
    """One row per channel: prediction, truth (shared colour scale) and their difference, for one sample."""
    pred, target = np.asarray(pred), np.asarray(target)
    rows = len(fields)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.8 * rows), squeeze=False)
    for c, name in enumerate(fields):
        lo, hi = float(min(pred[c].min(), target[c].min())), float(max(pred[c].max(), target[c].max()))
        err = pred[c] - target[c]
        bound = float(np.abs(err).max()) or 1.0
        panels = [("prediction", pred[c], "viridis", lo, hi), ("truth", target[c], "viridis", lo, hi)]
        panels.append(("error", err, "RdBu_r", -bound, bound))
        for ax, (label, img, cmap, vmin, vmax) in zip(axes[c], panels, strict=True):
            im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_spectra(spectra: Mapping[str, tuple], path: Path, title: str = "error spectrum") -> Path:
    """RMS error per radial wavenumber shell, one line per candidate, log y axis."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (k, s) in spectra.items():
        k, s = np.asarray(k), np.asarray(s)
        ax.semilogy(k[s > 0], s[s > 0], marker=".", label=name)
    ax.set_xlabel("radial wavenumber |k|")
    ax.set_ylabel("RMS error in shell")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(
    curves: Mapping[str, Mapping[float, tuple[float, float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    fits: Mapping[str, object] | None = None,
) -> Path:
    """Error against x on log-log axes with error bars (mean, std); optional fitted laws drawn dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        xs = np.array(sorted(curve), dtype=float)
        mean = np.array([curve[x][0] for x in sorted(curve)])
        std = np.array([curve[x][1] for x in sorted(curve)])
        line = ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=name)
        fit = (fits or {}).get(name)
        if fit is not None and len(xs) > 1:
            grid = np.geomspace(xs.min(), xs.max(), 100)
            ax.plot(grid, fit.predict(grid), "--", color=line[0].get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_scaling(
    points: Mapping[float, tuple[float, float]],
    path: Path,
    *,
    xlabel: str,
    title: str,
    fit=None,
    flagged: Sequence[float] = (),
    ylabel: str = "downstream error",
    references: Mapping[str, float] | None = None,
    runs: Mapping[float, Sequence[float]] | None = None,
) -> Path:
    """One axis of a scaling study on log-log axes: mean ± std per x (each run a small dot), the fitted law
    dashed, points whose runs differ in more than this axis circled in red, and reference levels dotted."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = np.array(sorted(points), dtype=float)
    mean = np.array([points[x][0] for x in sorted(points)])
    std = np.array([points[x][1] for x in sorted(points)])
    ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label="mean ± std over runs")
    for x, errors in (runs or {}).items():
        ax.scatter([x] * len(errors), errors, s=12, color="k", alpha=0.5, zorder=3)
    if fit is not None and len(xs) > 1:
        grid = np.geomspace(xs.min(), xs.max(), 100)
        ax.plot(grid, fit.predict(grid), "--", alpha=0.7, label=f"fit: alpha = {fit.alpha:.3g}")
    marked = [x for x in xs if x in set(flagged)]
    if marked:
        ax.scatter(marked, [points[x][0] for x in marked], s=160, facecolors="none", edgecolors="red",
                   label="differs in more than this axis")  # fmt: skip
    for (name, level), style in zip((references or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(level, color="grey", ls=style, lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if len(xs) <= 8 and xs.max() / xs.min() < 100:  # few values within two decades: label them plainly
        ax.set_xticks(xs, [f"{x:.4g}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    frontier: tuple[Sequence[float], Sequence[float]] | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """One line per run (e.g. downstream error against step or FLOPs), log y; an optional frontier drawn
    as a black step line through its points, and reference levels (e.g. persistence) as dashed lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    for (name, level), style in zip((references or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(level, color="grey", ls=style, lw=1.2, label=name)
    if frontier is not None and len(frontier[0]):
        ax.step(frontier[0], frontier[1], "k-", where="post", lw=1.5, alpha=0.8, label="frontier")
        ax.scatter(frontier[0], frontier[1], color="k", zorder=3, s=18)
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
