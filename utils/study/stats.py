"""Rank correlations with bootstrap intervals (numpy only: scipy may be absent).

    kendall_tau(x, y)      # tau-b: ties counted as in the usual statistics packages
    spearman_rho(x, y)     # Pearson correlation of average ranks
    correlate(x, y, idx)   # both, each with a 95% percentile-bootstrap interval

Every function also takes [B, n] arrays (one row per bootstrap resample) and then returns
[B] values; a row whose x or y is constant has no defined correlation and gives NaN.
Bootstrap intervals resample the *subnets* (pairs x_i, y_i) with replacement, and one
index matrix (`bootstrap_indices`) is shared by every predictor of a study, so their
intervals and paired differences come from the same resamples.
"""
from __future__ import annotations

import math

import numpy as np

# Rows per chunk for the O(n^2) pairwise comparisons: bounds memory to ~chunk*n*n bytes.
_CHUNK = 256


def _as_rows(x, y) -> tuple[np.ndarray, np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    if x.ndim not in (1, 2):
        raise ValueError(f"expected [n] or [B, n] arrays, got shape {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    single = x.ndim == 1
    return np.atleast_2d(x), np.atleast_2d(y), single


def _out(v: np.ndarray, single: bool):
    return float(v[0]) if single else v


def kendall_tau(x, y):
    """Kendall's tau-b: (concordant - discordant) / sqrt(pairs untied in x * in y)."""
    x, y, single = _as_rows(x, y)
    out = np.empty(x.shape[0])
    iu = np.triu_indices(x.shape[1], k=1)
    for lo in range(0, x.shape[0], _CHUNK):
        sx = np.sign(x[lo:lo + _CHUNK, :, None] - x[lo:lo + _CHUNK, None, :])[:, iu[0], iu[1]]
        sy = np.sign(y[lo:lo + _CHUNK, :, None] - y[lo:lo + _CHUNK, None, :])[:, iu[0], iu[1]]
        num = (sx * sy).sum(axis=1)
        den = np.sqrt(np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + _CHUNK] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _out(np.clip(out, -1.0, 1.0), single)


def average_ranks(x) -> np.ndarray:
    """1-based ranks of each row, ties sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    rows = np.atleast_2d(x)
    out = np.empty_like(rows)
    for lo in range(0, rows.shape[0], _CHUNK):
        r = rows[lo:lo + _CHUNK]
        less = (r[:, None, :] < r[:, :, None]).sum(axis=2)
        equal = (r[:, None, :] == r[:, :, None]).sum(axis=2)
        out[lo:lo + _CHUNK] = less + (equal + 1) / 2.0
    return out[0] if x.ndim == 1 else out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    # Ranks are multiples of 0.5, so "constant" means exactly zero spread.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rho(x, y):
    """Spearman's rho: the Pearson correlation of the average ranks."""
    x, y, single = _as_rows(x, y)
    return _out(np.clip(_pearson_rows(average_ranks(x), average_ranks(y)), -1.0, 1.0), single)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] indices drawn with replacement (the shared resampling plan)."""
    if n < 2:
        raise ValueError(f"need at least 2 subnets for a rank correlation, got {n}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(samples: np.ndarray, level: float = 0.95) -> list[float | None]:
    """Percentile interval of the finite samples ([None, None] when there are none)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return [None, None]
    a = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(s, [a, 100.0 - a])
    return [float(lo), float(hi)]


def _none_if_nan(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def correlate(score, truth, idx: np.ndarray, level: float = 0.95) -> dict:
    """tau and rho of `score` against `truth`, each with a bootstrap interval.

    Returns {tau, tau_ci, rho, rho_ci, resamples_used, tau_boot, rho_boot}; the *_boot
    arrays (one value per resample, NaN where undefined) let callers form paired
    differences. A correlation that is undefined (constant score) is None.
    """
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    tau_boot = kendall_tau(s[idx], t[idx])
    rho_boot = spearman_rho(s[idx], t[idx])
    return dict(tau=_none_if_nan(kendall_tau(s, t)), tau_ci=interval(tau_boot, level),
                rho=_none_if_nan(spearman_rho(s, t)), rho_ci=interval(rho_boot, level),
                resamples_used=int(np.isfinite(tau_boot).sum()),
                tau_boot=tau_boot, rho_boot=rho_boot)


def paired_difference(a_boot: np.ndarray, b_boot: np.ndarray, a: float | None,
                      b: float | None, level: float = 0.95) -> dict:
    """a - b with the interval of the per-resample differences (same resamples)."""
    diff = None if a is None or b is None else float(a - b)
    return dict(diff=diff, ci=interval(np.asarray(a_boot) - np.asarray(b_boot), level))
