"""Poseidon's accuracy gain and efficiency gain over a baseline (Poseidon paper, eq. 11).

``AG_S = E_S(baseline) / E_S(model)`` and ``EG_S = S / s`` where ``s`` solves ``E_s(model) = E_S(baseline)``,
both from error-versus-number-of-trajectories curves. Curves are interpolated piecewise linearly in
log-log (exact for a power law between samples). When ``s`` falls outside the model's sampled range
it is extrapolated from the end segment and the result says so, with the bound the samples prove.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


def _curve(curve: Mapping[float, float], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted log(samples), log(errors) of a {number of trajectories: error} curve."""
    if len(curve) < 1:
        raise ValueError(f"{name}: the error curve is empty")
    xs = np.array(sorted(curve), dtype=float)
    ys = np.array([curve[x] for x in sorted(curve)], dtype=float)
    if (xs <= 0).any() or not (np.isfinite(ys) & (ys > 0)).all():
        raise ValueError(
            f"{name}: trajectory counts and errors must be positive and finite, got {dict(curve)}"
        )
    return np.log(xs), np.log(ys)


def error_at(curve: Mapping[float, float], samples: float, name: str = "curve") -> float:
    """The curve's error at ``samples`` trajectories, interpolated in log-log; must lie in the sampled range."""
    lx, ly = _curve(curve, name)
    x = math.log(samples)
    if not lx[0] - 1e-12 <= x <= lx[-1] + 1e-12:
        raise ValueError(
            f"{name}: {samples} trajectories is outside the sampled range "
            f"[{math.exp(lx[0]):g}, {math.exp(lx[-1]):g}]"
        )
    return float(np.exp(np.interp(x, lx, ly)))


def accuracy_gain(
    model: Mapping[float, float], baseline: Mapping[float, float], samples: float | None = None
) -> float:
    """AG_S = E_S(baseline) / E_S(model); S defaults to the largest count both curves sampled."""
    s = samples if samples is not None else min(max(model), max(baseline))
    return error_at(baseline, s, "baseline") / error_at(model, s, "model")


@dataclass(frozen=True)
class EfficiencyGain:
    """EG_S with how it was obtained: interpolated inside the model's sampled range, or extrapolated."""

    samples: float  # S, the baseline's number of trajectories
    target_error: float  # E_S(baseline)
    matching_samples: float | None  # s with E_s(model) = target (None: cannot be extrapolated)
    gain: float | None  # S / s
    in_range: bool  # s was interpolated between the model's samples
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def efficiency_gain(
    model: Mapping[float, float], baseline: Mapping[float, float], samples: float | None = None
) -> EfficiencyGain:
    """EG_S = S / s where s is the fewest trajectories at which the model's curve reaches E_S(baseline).

    S defaults to the baseline's largest sampled count. The first crossing along increasing s is used,
    so a noisy, non-monotone curve gives the smallest s that is proven to suffice.
    """
    big_s = samples if samples is not None else max(baseline)
    target = error_at(baseline, big_s, "baseline")
    lx, ly = _curve(model, "model")
    lt = math.log(target)
    lo, hi = math.exp(lx[0]), math.exp(lx[-1])
    if ly[0] <= lt:
        s = _extrapolate(lx[:2], ly[:2], lt)
        note = f"model reaches the target at its fewest samples ({lo:g}): EG >= {big_s / lo:g}"
        return _result(big_s, target, s, False, note + (", extrapolated" if s else ", not extrapolated"))
    for i in range(len(lx) - 1):
        if ly[i + 1] <= lt:
            s = math.exp(np.interp(lt, [ly[i + 1], ly[i]], [lx[i + 1], lx[i]]))
            return _result(big_s, target, s, True, "interpolated in log-log")
    s = _extrapolate(lx[-2:], ly[-2:], lt)
    note = f"model does not reach the target within its samples (up to {hi:g}): EG < {big_s / hi:g}"
    return _result(big_s, target, s, False, note + (", extrapolated" if s else ", not extrapolated"))


def _extrapolate(lx: np.ndarray, ly: np.ndarray, lt: float) -> float | None:
    """s on the log-log line through an end segment; None when that segment does not decrease."""
    if len(lx) < 2 or ly[1] >= ly[0]:
        return None
    slope = (ly[1] - ly[0]) / (lx[1] - lx[0])
    return math.exp(lx[0] + (lt - ly[0]) / slope)


def _result(big_s: float, target: float, s: float | None, in_range: bool, note: str) -> EfficiencyGain:
    return EfficiencyGain(big_s, target, s, big_s / s if s else None, in_range, note)
