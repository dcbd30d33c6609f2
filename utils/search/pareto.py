"""Pareto filters: the points no other point beats on every axis (cost down, score up).

Used by the exact search (its partial solutions) and by the FLOPs-vs-score plot.

    keep = pareto_front(flops, score)              # indices, by cost up
    keep = pareto_front_3d(flops, params, score)   # indices, in flops order
"""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def pareto_front(cost: Sequence[float] | np.ndarray,
                 score: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower cost, higher score),
    ordered by cost. Of points equal on both, the first one given is kept."""
    f = np.asarray(cost)
    s = np.asarray(score, dtype=np.float64)
    if len(f) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-s, f))  # by cost up, then score down (stable: earlier wins ties)
    s_sorted = s[order]
    best_before = np.maximum.accumulate(s_sorted)
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = s_sorted[1:] > best_before[:-1]
    return order[keep].astype(np.int64)


def pareto_front_3d(f: np.ndarray, p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (lower f, lower p, higher s)."""
    order = np.lexsort((-s, p, f))
    # Sweep in f order; `stair` holds the kept points' (p, s) as a staircase (p up, s
    # strictly up), so "is there an earlier point with p' <= p and s' >= s" is one bisection.
    stair_p: list[int] = []
    stair_s: list[float] = []
    keep = []
    for idx in order.tolist():
        pi, si = int(p[idx]), float(s[idx])
        j = bisect.bisect_right(stair_p, pi) - 1
        if j >= 0 and stair_s[j] >= si:
            continue
        keep.append(idx)
        # Insert (pi, si), removing the entries it dominates (p >= pi, s <= si).
        k = bisect.bisect_left(stair_p, pi)
        end = k
        while end < len(stair_p) and stair_s[end] <= si:
            end += 1
        stair_p[k:end] = [pi]
        stair_s[k:end] = [si]
    return np.asarray(keep, dtype=np.int64)


__all__ = ["pareto_front", "pareto_front_3d"]
