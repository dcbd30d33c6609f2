"""The provably best architecture under a FLOPs (and params) limit, by dynamic programming.

The BN indicator, FLOPs and params of an architecture are all sums of per-layer entries,
so "maximise the score subject to FLOPs <= limit" is a multiple-choice knapsack: one op
per layer. We sweep the layers keeping every partial solution that could still be part of
an optimum, i.e. the Pareto front of (flops up, score down) - or (flops, params, score)
with a params limit - and drop partial solutions that cannot fit the limits even with the
cheapest remaining ops, or cannot beat a known feasible score even with the best ones.
The surviving fronts are tiny (tens to a few thousand entries), so the full spaces solve
in milliseconds, and the answer is exact: no weight is rounded.

    result = solve(score_matrix, table.flops, space.allowed_mask(), flops_limit,
                   base_flops=table.base_flops)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from utils.search.pareto import pareto_front, pareto_front_3d
from utils.spaces import column_ops, op_columns


@dataclass(frozen=True)
class ExactResult:
    arch: tuple[int, ...]
    score: float
    flops: int
    params: int | None
    seconds: float
    max_front: int  # largest number of partial solutions kept at any layer


def solve(score: np.ndarray, flops: np.ndarray, allowed: np.ndarray, flops_limit: float,
          params: np.ndarray | None = None, params_limit: float | None = None,
          base_flops: int = 0, base_params: int = 0) -> ExactResult | None:
    """Maximise sum(score[i, op_i]) s.t. base + sum(flops[i, op_i]) <= flops_limit.

    All matrices are [layers, ops + 1] with the last column for the skip (-1); `allowed`
    marks each layer's choices. `params`/`params_limit` add a second budget. Returns None
    when no architecture fits. Ties in score go to fewer FLOPs, then fewer params.
    """
    t0 = time.perf_counter()
    score = np.asarray(score, dtype=np.float64)
    flops = np.asarray(flops, dtype=np.int64)
    allowed = np.asarray(allowed, dtype=bool)
    use_params = params_limit is not None
    if use_params:
        if params is None:
            raise ValueError("params_limit needs the params matrix")
        params = np.asarray(params, dtype=np.int64)
    n_layers, n_cols = score.shape
    if not allowed.any(axis=1).all():
        raise ValueError("every layer needs at least one allowed choice")
    cols = [np.flatnonzero(allowed[i]) for i in range(n_layers)]

    budget_f = flops_limit - base_flops
    budget_p = (params_limit - base_params) if use_params else None
    # Cheapest/best completions of layers i+1.. , for pruning.
    min_f = np.array([flops[i, c].min() for i, c in enumerate(cols)])
    rest_min_f = np.concatenate([np.cumsum(min_f[::-1])[::-1][1:], [0]])
    max_s = np.array([score[i, c].max() for i, c in enumerate(cols)])
    rest_max_s = np.concatenate([np.cumsum(max_s[::-1])[::-1][1:], [0.0]])
    if use_params:
        min_p = np.array([params[i, c].min() for i, c in enumerate(cols)])
        rest_min_p = np.concatenate([np.cumsum(min_p[::-1])[::-1][1:], [0]])
    # A feasible completion of any kept state: the cheapest op of every later layer (by
    # flops, then params). It gives a lower bound on the optimum for bound pruning; with a
    # params limit the cheapest-by-flops completion may break it, so no bound is used there.
    cheap_s = np.array([score[i, c[np.lexsort((-score[i, c], flops[i, c]))[0]]]
                        for i, c in enumerate(cols)])
    rest_cheap_s = np.concatenate([np.cumsum(cheap_s[::-1])[::-1][1:], [0.0]])

    fr_f = np.zeros(1, dtype=np.int64)
    fr_s = np.zeros(1, dtype=np.float64)
    fr_p = np.zeros(1, dtype=np.int64)
    parents: list[np.ndarray] = []
    choices: list[np.ndarray] = []
    max_front = 1
    for i in range(n_layers):
        c = cols[i]
        cand_f = (fr_f[:, None] + flops[i, c][None, :]).ravel()
        cand_s = (fr_s[:, None] + score[i, c][None, :]).ravel()
        parent = np.repeat(np.arange(len(fr_f)), len(c))
        choice = np.tile(c, len(fr_f))
        ok = cand_f + rest_min_f[i] <= budget_f
        if use_params:
            cand_p = (fr_p[:, None] + params[i, c][None, :]).ravel()
            ok &= cand_p + rest_min_p[i] <= budget_p
        if not ok.any():
            return None
        idx = np.flatnonzero(ok)
        if not use_params:
            lower = (cand_s[idx] + rest_cheap_s[i]).max()
            slack = 1e-9 * (1.0 + abs(lower))  # float sums may differ in the last bits
            idx = idx[cand_s[idx] + rest_max_s[i] >= lower - slack]
            keep = idx[pareto_front(cand_f[idx], cand_s[idx])]
        else:
            keep = idx[pareto_front_3d(cand_f[idx], cand_p[idx], cand_s[idx])]
            fr_p = cand_p[keep]
        fr_f, fr_s = cand_f[keep], cand_s[keep]
        parents.append(parent[keep])
        choices.append(choice[keep])
        max_front = max(max_front, len(keep))

    # Every final state is feasible; the best score wins, ties to fewer flops then params.
    best = int(np.lexsort((fr_p if use_params else np.zeros_like(fr_f), fr_f, -fr_s))[0])
    arch = [0] * n_layers
    k = best
    for i in range(n_layers - 1, -1, -1):
        col = int(choices[i][k])
        arch[i] = int(column_ops(col, n_cols))
        k = int(parents[i][k])
    total_p = None
    if params is not None:
        total_p = int(base_params + params[np.arange(n_layers), op_columns(arch, n_cols)].sum())
    return ExactResult(arch=tuple(arch), score=float(fr_s[best]),
                       flops=int(base_flops + fr_f[best]), params=total_p,
                       seconds=time.perf_counter() - t0, max_front=max_front)


def brute_force(score: np.ndarray, flops: np.ndarray, allowed: np.ndarray, flops_limit: float,
                params: np.ndarray | None = None, params_limit: float | None = None,
                base_flops: int = 0, base_params: int = 0) -> tuple[tuple[int, ...], float] | None:
    """Enumerate every architecture (tiny spaces only; for tests): (arch, best score)."""
    import itertools
    n_cols = score.shape[1]
    cols = [np.flatnonzero(allowed[i]) for i in range(score.shape[0])]
    combos = np.array(list(itertools.product(*cols)), dtype=np.int64)
    rows = np.arange(score.shape[0])
    f = base_flops + flops[rows, combos].sum(axis=1)
    ok = f <= flops_limit
    if params_limit is not None:
        ok &= base_params + params[rows, combos].sum(axis=1) <= params_limit
    if not ok.any():
        return None
    s = score[rows, combos].sum(axis=1)
    s = np.where(ok, s, -np.inf)
    k = int(np.argmax(s))
    arch = tuple(int(c) for c in column_ops(combos[k], n_cols))
    return arch, float(s[k])
