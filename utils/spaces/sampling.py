"""Architectures spread evenly over a FLOPs range (for ranking studies).

Uniform sampling piles architectures up in the middle of the FLOPs range (a sum of many
independent layer costs), so the cheap end, where a FLOPs limit bites, is barely
visited. Here a large pool is drawn with a random per-architecture *tilt*: each layer
picks among its allowed choices with probability proportional to exp(t * c), where c is
the choice's FLOPs rescaled to [0, 1] within the layer and t ~ U(-T, T); t < 0 favours
cheap ops, t > 0 costly ones. The pool (only architectures under the limit, deduplicated)
is then cut into `n` equal-width FLOPs bins between the cheapest architecture and the
limit, and one architecture is drawn from each bin; bins left empty are made up by the
pool architecture farthest (in FLOPs) from those already picked. Everything is seeded.
"""
from __future__ import annotations

import numpy as np

from utils.flops.table import FlopsTable
from utils.spaces import SearchSpace


def _tilted_pool(space: SearchSpace, table: FlopsTable, size: int, rng: np.random.Generator,
                 max_tilt: float) -> np.ndarray:
    """[size, layers] architectures (-1 = skip) drawn with a random cost tilt each."""
    mask = space.allowed_mask()
    tilt = rng.uniform(-max_tilt, max_tilt, size=size)
    archs = np.empty((size, space.num_layers), dtype=np.int64)
    for i in range(space.num_layers):
        cols = np.flatnonzero(mask[i])
        cost = table.flops[i, cols].astype(np.float64)
        span = cost.max() - cost.min()
        c = (cost - cost.min()) / span if span > 0 else np.zeros_like(cost)
        logits = tilt[:, None] * c[None, :]
        pick = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # Gumbel-max draw
        archs[:, i] = space.column_ops(cols[pick])
    return archs


def stratified_by_flops(space: SearchSpace, table: FlopsTable, n: int, flops_limit: float,
                        seed: int, pool_size: int = 20000,
                        max_tilt: float = 6.0,
                        flops_floor: float | None = None) -> list[tuple[int, ...]]:
    """`n` distinct architectures with `flops_floor` < FLOPs <= `flops_limit`, spread
    over that range (no floor: from the cheapest architecture drawn).

    Returned in increasing FLOPs order. Raises ValueError when the pool in the range
    holds fewer than `n` distinct architectures.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    pool = _tilted_pool(space, table, pool_size, rng, max_tilt)
    flops = np.asarray(table.flops_of(pool), dtype=np.float64)
    keep = flops <= flops_limit
    if flops_floor is not None:
        keep &= flops > flops_floor
    if not keep.any() and flops_floor is not None:
        raise ValueError(f"no architecture drawn has FLOPs in ({flops_floor / 1e6:.2f}M, "
                         f"{flops_limit / 1e6:.2f}M]")
    if not keep.any():
        raise ValueError(f"no architecture fits the FLOPs limit {flops_limit / 1e6:.2f}M (the "
                         f"cheapest drawn has {flops.min() / 1e6:.2f}M)")
    pool, flops = pool[keep], flops[keep]
    pool, first = np.unique(pool, axis=0, return_index=True)
    flops = flops[first]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} distinct architectures under the FLOPs limit "
                         f"{flops_limit / 1e6:.2f}M were found; ask for fewer than {n}")
    lo = float(flops.min())
    edges = np.linspace(lo, float(flops_limit), n + 1)
    bins = np.clip(np.searchsorted(edges, flops, side="right") - 1, 0, n - 1)
    order = rng.permutation(len(pool))  # a random member of each bin, not the first found
    chosen: list[int] = []
    seen_bins: set[int] = set()
    for j in order:
        if bins[j] not in seen_bins:
            seen_bins.add(int(bins[j]))
            chosen.append(int(j))
    taken = np.zeros(len(pool), dtype=bool)
    taken[chosen] = True
    while len(chosen) < n:  # empty bins: fill the widest remaining FLOPs gap
        gaps = np.abs(flops[:, None] - flops[np.array(chosen)][None, :]).min(axis=1)
        gaps[taken] = -1.0
        j = int(np.argmax(gaps))
        taken[j] = True
        chosen.append(j)
    chosen.sort(key=lambda j: (flops[j], tuple(pool[j])))
    return [tuple(int(a) for a in pool[j]) for j in chosen]
