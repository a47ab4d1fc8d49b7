"""The one-line verdicts a report opens with: candidates against persistence, pretrained against scratch.

A table of errors says little until it is read against two references: persistence (the input itself as
the prediction), which tells whether the chosen horizon is learnable at all, and the same architecture
trained from scratch, which tells whether pretraining helped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from eval_suite.report import fmt


def versus_persistence(errors: Mapping[str, float], persistence: float) -> dict:
    """Which candidates beat persistence's error; `line` says so, loudly when none does."""
    finite = {k: v for k, v in errors.items() if v is not None and math.isfinite(v)}
    better = sorted((k for k, v in finite.items() if v < persistence), key=finite.get)
    if not finite or not math.isfinite(persistence):
        line = "no candidate could be compared with persistence"
    elif not better:
        line = (
            f"every candidate is no better than persistence (the input as the prediction, relative L1 "
            f"{fmt(persistence, 3)}): this horizon does not separate them"
        )
    else:
        best = better[0]
        line = (
            f"{len(better)} of {len(finite)} candidates beat persistence (relative L1 {fmt(persistence, 3)}); "
            f"best `{best}` {fmt(finite[best], 3)}"
        )
    return {
        "persistence": persistence,
        "better_than_persistence": better,
        "none_better": not better,
        "line": line,
    }


def pretrained_vs_scratch(pretrained: Mapping, scratch: Mapping, *, method: str, where: str) -> dict:
    """Paired per-seed relative change of the pretrained error against scOT from scratch, mean ± std.

    `pretrained` and `scratch` map seed -> error on the same shots and test set; `where` names the point
    (e.g. "8 shots") in the line.
    """
    per_seed = {
        str(s): pretrained[s] / scratch[s] - 1
        for s in pretrained
        if s in scratch and scratch[s] and math.isfinite(pretrained[s] / scratch[s])
    }
    change = np.array(list(per_seed.values()), dtype=float)
    if not len(change):
        return {"line": "pretrained against scratch: no comparable seeds", "mean": None, "std": None}
    mean, std = float(change.mean()), float(change.std())
    spread = f" ± {_percent(std)}%" if len(change) > 1 else ""
    noise = "one seed, no interval" if len(change) == 1 else f"mean ± std over {len(change)} seeds"
    how = f"`{method}` vs `scot_scratch` at {where}, {noise}"
    if mean < 0:
        line = f"pretraining helped: {_percent(-mean)}%{spread} lower error than scOT from scratch ({how})"
    else:
        line = f"pretraining hurt by {_percent(mean)}%{spread}: higher error than scOT from scratch ({how})"
    if len(change) > 1 and abs(mean) <= std:
        line += ", within the seed spread"
    return {
        "method": method,
        "where": where,
        "relative_change_per_seed": per_seed,
        "mean": mean,
        "std": std,
        "helped": mean < 0,
        "line": line,
    }


def _percent(fraction: float) -> str:
    """A fraction as a percentage with two significant digits (18, 3.4, 0.27)."""
    value = 100 * abs(fraction)
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"
