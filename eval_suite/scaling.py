"""Scaling-law fits ``E = a x^-alpha + c`` and, jointly in model size and data, ``E(N, D) = a N^-alpha +
b D^-beta + c`` (Chinchilla's form), with confidence intervals and R^2; and the compute frontier.

Errors span decades, so the fits minimise squared residuals of log E (relative errors; a plain
least-squares fit would only see the largest errors), and R^2 is that of log E. Bounds keep the
laws physical: a, b > 0, 0 <= alpha, beta <= 5, 0 <= c <= min(E) (the floor cannot exceed an observed
error). Intervals come from the fit's covariance (Student t) or from a pairs bootstrap.
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


@dataclass(frozen=True)
class JointFit:
    """A fitted ``E(N, D) = a N^-alpha + b D^-beta + c`` with ``confidence`` intervals."""

    a: float
    alpha: float
    b: float
    beta: float
    c: float
    r2: float
    ci: dict[str, tuple[float, float]]
    confidence: float
    method: str
    n_points: int
    notes: list[str] = field(default_factory=list)

    def predict(self, n, d) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.a * n**-self.alpha + self.b * d**-self.beta + self.c

    def to_dict(self) -> dict:
        return {
            "law": "E = a * N^-alpha + b * D^-beta + c",
            **{k: getattr(self, k) for k in ("a", "alpha", "b", "beta", "c", "r2")},
            "ci": {k: list(v) for k, v in self.ci.items()},
            "confidence": self.confidence,
            "method": self.method,
            "n_points": self.n_points,
            "notes": list(self.notes),
        }


def _joint_law(lxy, log_a, alpha, log_b, beta, c):
    return np.log(np.exp(log_a - alpha * lxy[0]) + np.exp(log_b - beta * lxy[1]) + c)


def _fit_joint_once(lxy: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    floor = float(np.exp(ly.min()))
    half = float(np.log(np.exp(ly).mean() / 2))  # each term starts at half the mean error at x = 1 scale
    p0 = [half + 0.3 * lxy[0].mean(), 0.3, half + 0.3 * lxy[1].mean(), 0.3, 0.1 * floor]
    bounds = ([-np.inf, 0.0, -np.inf, 0.0, 0.0], [np.inf, MAX_ALPHA, np.inf, MAX_ALPHA, floor])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        return optimize.curve_fit(_joint_law, lxy, ly, p0=p0, bounds=bounds, maxfev=50000)


def fit_joint_law(n, d, errors, *, confidence: float = 0.95, bootstrap: int = 0, seed: int = 0) -> JointFit:
    """Fit ``E = a N^-alpha + b D^-beta + c`` to runs that vary model size N and data D (>= 6 points)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, errors))
    if not n.shape == d.shape == y.shape or n.ndim != 1:
        raise ValueError(
            f"N, D and errors: expected 1-D arrays of one length, got {n.shape}, {d.shape}, {y.shape}"
        )
    if len(y) < 6:
        raise ValueError(f"the joint law has 5 parameters: need at least 6 runs, got {len(y)}")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError("the joint law needs runs that vary both N (parameters) and D (trajectories)")
    if not all(((v > 0) & np.isfinite(v)).all() for v in (n, d, y)):
        raise ValueError("N, D and errors must be positive and finite")
    lxy, ly = np.log(np.stack([n, d])), np.log(y)
    params, cov = _fit_joint_once(lxy, ly)
    residual = ly - _joint_law(lxy, *params)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else float("nan")
    notes = []
    if params[4] >= math.exp(ly.min()) * (1 - 1e-6):
        notes.append("the floor c sits at its bound min(E): the data do not resolve a power-law decay")
    for name, value in (("alpha", params[1]), ("beta", params[3])):
        if value >= MAX_ALPHA * (1 - 1e-6):
            notes.append(f"{name} sits at its bound {MAX_ALPHA}")
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        fits = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(ly), len(ly))
            if len(np.unique(lxy[0, idx])) < 2 or len(np.unique(lxy[1, idx])) < 2 or len(np.unique(idx)) < 6:
                continue
            try:
                fits.append(_fit_joint_once(lxy[:, idx], ly[idx])[0])
            except RuntimeError:
                continue
        samples = np.array(fits).reshape(-1, 5)
        q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
        raw = [
            tuple(np.percentile(samples[:, i], q)) if len(samples) else (math.nan, math.nan) for i in range(5)
        ]
        method = f"bootstrap ({len(samples)} of {bootstrap} resamples fitted)"
    else:
        dof = len(ly) - 5
        t = stats.t.ppf((1 + confidence) / 2, dof) if dof > 0 else math.nan
        se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.isfinite(cov).all() else np.full(5, math.nan)
        raw = [(p - t * s, p + t * s) for p, s in zip(params, se, strict=True)]
        method = "covariance (Student t)"
        if dof <= 0:
            notes.append("no degrees of freedom left: intervals are undefined")
    ci = {
        "a": (math.exp(raw[0][0]), math.exp(raw[0][1])),
        "alpha": tuple(map(float, raw[1])),
        "b": (math.exp(raw[2][0]), math.exp(raw[2][1])),
        "beta": tuple(map(float, raw[3])),
        "c": tuple(map(float, raw[4])),
    }
    a, alpha, b, beta, c = (
        math.exp(params[0]),
        float(params[1]),
        math.exp(params[2]),
        float(params[3]),
        float(params[4]),
    )
    return JointFit(a, alpha, b, beta, c, r2, ci, confidence, method, len(ly), notes)


def compute_frontier(flops, errors) -> np.ndarray:
    """Indices of the points on the compute frontier: each has a lower error than every cheaper point."""
    flops, errors = np.asarray(flops, dtype=float), np.asarray(errors, dtype=float)
    order = np.lexsort((errors, flops))
    best, keep = math.inf, []
    for i in order:
        if errors[i] < best:
            keep.append(i)
            best = errors[i]
    return np.array(keep, dtype=int)
