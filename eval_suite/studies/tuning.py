"""Learning-rate selection for study candidates: a small grid of factors on each candidate's own rates,
chosen by validation loss, so that no candidate wins or loses on a learning rate fixed for another.

Every trial trains with the study's full step budget (the chosen trial is an ordinary run of that budget;
tuning costs one run per factor tried). The factor scales a method's group rates together (Poseidon's
backbone/embedding/time-norm ratios are kept) and a baseline's `budget.lr`, through
`fit_candidate(..., lr_scale=...)`. Selection reads only the validation trajectories, never the test set.
When the best factor lies on the edge of the grid, the grid is extended past that edge (up to twice by
default); a choice still on the edge after that is flagged (`LrChoice.at_edge`) and reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data_pipelines.trajectory import Trajectory
from eval_suite.studies.candidates import fit_candidate

DEFAULT_GRID = (1 / 3, 1.0, 3.0)
"""Factors on a candidate's default learning rates; a ratio of 3 between neighbours."""


@dataclass
class LrChoice:
    """The factor kept for one candidate, the best validation loss each tried factor reached and the kept
    trial itself (`fitted`: `fit_candidate`'s (operator, result), a finished run of the study's budget)."""

    candidate: str
    scale: float
    val_loss: dict[float, float] = field(default_factory=dict)
    fitted: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def at_edge(self) -> bool:
        """The kept factor is the largest or smallest one tried: a wider search might have done better."""
        return len(self.val_loss) > 1 and self.scale in (min(self.val_loss), max(self.val_loss))

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate,
            "scale": self.scale,
            "at_edge": self.at_edge,
            "val_loss": {f"{k:.4g}": v for k, v in sorted(self.val_loss.items())},
        }


def _rank(scale: float, loss: float) -> tuple[float, float]:
    """Lower is better: the loss, then (on a tie) the distance of the factor from 1 (the default rates)."""
    return (loss if math.isfinite(loss) else math.inf, abs(math.log(scale)))


def _best(losses: dict[float, float]) -> float:
    """The factor with the lowest finite loss; ties go to the factor closest to 1."""
    if not any(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"learning-rate search: every trial diverged (factors {sorted(losses)})")
    return min(losses, key=lambda s: _rank(s, losses[s]))


def search(
    trial: Callable[[float], float],
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    extend: int = 2,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[float, dict[float, float]]:
    """(best factor, {factor: validation loss}) of `trial` over `grid`, extended past an edge that wins.

    `trial(factor)` trains once and returns its best validation loss (inf or nan for a run that diverged).
    `extend` bounds the extra factors tried beyond each edge, spaced by the grid's outer ratio.
    """
    grid = sorted({float(s) for s in grid})
    if not grid or any(s <= 0 for s in grid):
        raise ValueError(f"learning-rate grid must hold positive factors, got {list(grid)}")
    losses: dict[float, float] = {}

    def run(scale: float) -> None:
        try:
            losses[scale] = float(trial(scale))
        except FloatingPointError:  # the trainer stops a run whose loss became NaN/Inf
            losses[scale] = math.inf
        log(f"lr factor {scale:.4g}: best validation loss {losses[scale]:.4g}")

    for scale in grid:
        run(scale)
    low_ratio = grid[1] / grid[0] if len(grid) > 1 else 3.0
    high_ratio = grid[-1] / grid[-2] if len(grid) > 1 else 3.0
    for _ in range(extend):
        best, tried = _best(losses), sorted(losses)
        if best == tried[-1]:
            run(best * high_ratio)
        elif best == tried[0]:
            run(best / low_ratio)
        else:
            break
    return _best(losses), losses


def tune_candidate(
    name: str,
    train: Sequence[Trajectory],
    val: Sequence[Trajectory],
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    extend: int = 2,
    log: Callable[[str], None] = lambda _: None,
    **fit_options,
) -> LrChoice:
    """The learning-rate factor of candidate `name` on these shots, by validation loss after the full budget,
    with the kept trial (so the study need not train that seed again).

    `fit_options` are `fit_candidate`'s (budget, seed, model, options, bases, alpha, baseline sizes).
    """
    kept: dict[float, tuple] = {}

    def trial(scale: float) -> float:
        fitted = fit_candidate(name, train, val, lr_scale=scale, **fit_options)
        loss = fitted[1].best_val_loss
        if math.isfinite(loss) and all(
            _rank(scale, loss) < _rank(s, f[1].best_val_loss) for s, f in kept.items()
        ):
            kept.clear()
            kept[scale] = fitted  # only the best trial so far is held in memory: the one `_best` picks
        return loss

    scale, losses = search(trial, grid, extend=extend, log=lambda m: log(f"{name}: {m}"))
    return LrChoice(name, scale, losses, kept.get(scale))
