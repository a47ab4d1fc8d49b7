"""Scaling-law fits ``E = a x^-alpha + c`` with confidence intervals and R^2.

Errors span decades, so the fit minimises squared residuals of log E (relative errors; a plain
least-squares fit would only see the largest errors), and R^2 is that of log E. Bounds keep the
law physical: a > 0, 0 <= alpha <= 5, 0 <= c <= min(E) (the floor cannot exceed an observed error).
Intervals come from the fit's covariance (Student t) or from a pairs bootstrap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

MAX_ALPHA = 5.0


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted ``E = a x^-alpha + c`` with ``confidence`` intervals (NaN when the data cannot give one)."""

    a: float
    alpha: float
    c: float
    r2: float
    ci: dict[str, tuple[float, float]]
    confidence: float
    method: str
    n_points: int
    notes: list[str] = field(default_factory=list)

    def predict(self, x) -> np.ndarray:
        return self.a * np.asarray(x, dtype=float) ** -self.alpha + self.c

    def to_dict(self) -> dict:
        return {
            "law": "E = a * x^-alpha + c",
            "a": self.a,
            "alpha": self.alpha,
            "c": self.c,
            "r2": self.r2,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "confidence": self.confidence,
            "method": self.method,
            "n_points": self.n_points,
            "notes": list(self.notes),
        }


def _law(with_offset: bool):
    if with_offset:
        return lambda lx, log_a, alpha, c: np.log(np.exp(log_a - alpha * lx) + c)
    return lambda lx, log_a, alpha: log_a - alpha * lx


def _fit_once(lx: np.ndarray, ly: np.ndarray, with_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """Least squares in log space; returns parameters (log a, alpha[, c]) and their covariance."""
    slope, intercept = np.polyfit(lx, ly, 1) if len(lx) > 1 else (0.0, ly[0])
    alpha0 = float(np.clip(-slope, 0.0, MAX_ALPHA))
    if with_offset:
        floor = float(np.exp(ly.min()))
        p0 = [intercept, alpha0, 0.1 * floor]
        bounds = ([-np.inf, 0.0, 0.0], [np.inf, MAX_ALPHA, floor])
    else:
        p0, bounds = [intercept, alpha0], ([-np.inf, 0.0], [np.inf, MAX_ALPHA])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        params, cov = optimize.curve_fit(_law(with_offset), lx, ly, p0=p0, bounds=bounds, maxfev=20000)
    return params, cov


def fit_power_law(
    x,
    errors,
    *,
    with_offset: bool = True,
    confidence: float = 0.95,
    bootstrap: int = 0,
    seed: int = 0,
) -> PowerLawFit:
    """Fit ``E = a x^-alpha (+ c)``; intervals from the covariance, or from ``bootstrap`` resamples if > 0."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(errors, dtype=float)
    n_params = 3 if with_offset else 2
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and errors: expected two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < n_params:
        raise ValueError(f"need at least {n_params} points to fit {n_params} parameters, got {len(x)}")
    if not ((x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)).all():
        raise ValueError(f"x and errors must be positive and finite, got x={x.tolist()}, errors={y.tolist()}")
    lx, ly = np.log(x), np.log(y)
    params, cov = _fit_once(lx, ly, with_offset)
    residual = ly - _law(with_offset)(lx, *params)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else float("nan")
    notes = []
    if with_offset and params[2] >= math.exp(ly.min()) * (1 - 1e-6):
        notes.append("the floor c sits at its bound min(E): the data do not resolve a power-law decay")
    if params[1] >= MAX_ALPHA * (1 - 1e-6):
        notes.append(f"alpha sits at its bound {MAX_ALPHA}")
    if bootstrap > 0:
        samples = _bootstrap(lx, ly, with_offset, bootstrap, seed)
        q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
        raw = [
            tuple(np.percentile(samples[:, i], q)) if len(samples) else (math.nan, math.nan)
            for i in range(n_params)
        ]
        method = f"bootstrap ({len(samples)} of {bootstrap} resamples fitted)"
    else:
        dof = len(x) - n_params
        t = stats.t.ppf((1 + confidence) / 2, dof) if dof > 0 else math.nan
        se = (
            np.sqrt(np.clip(np.diag(cov), 0, None)) if np.isfinite(cov).all() else np.full(n_params, math.nan)
        )
        raw = [(p - t * s, p + t * s) for p, s in zip(params, se, strict=True)]
        method = "covariance (Student t)"
        if dof <= 0:
            notes.append("no degrees of freedom left: intervals are undefined")
    ci = {"a": (math.exp(raw[0][0]), math.exp(raw[0][1])), "alpha": tuple(map(float, raw[1]))}
    if with_offset:
        ci["c"] = tuple(map(float, raw[2]))
    c = float(params[2]) if with_offset else 0.0
    return PowerLawFit(math.exp(params[0]), float(params[1]), c, r2, ci, confidence, method, len(x), notes)


def _bootstrap(lx: np.ndarray, ly: np.ndarray, with_offset: bool, n: int, seed: int) -> np.ndarray:
    """Parameters refitted on pairs resampled with replacement (resamples with too few distinct x skipped)."""
    rng = np.random.default_rng(seed)
    need = 3 if with_offset else 2
    fits = []
    for _ in range(n):
        idx = rng.integers(0, len(lx), len(lx))
        if len(np.unique(lx[idx])) < need:
            continue
        try:
            fits.append(_fit_once(lx[idx], ly[idx], with_offset)[0])
        except RuntimeError:  # curve_fit did not converge on this resample
            continue
    return np.array(fits).reshape(-1, need)
