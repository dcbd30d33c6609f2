"""Can the BN indicator rank the ops of each layer? Its per-layer spread says.

The indicator of a candidate is a sum over layers of the chosen op's mean |gamma|. In a
layer where the ops' values barely differ (their gammas never moved away from the
init's 1.0, e.g. after a short BN-only training, or in layers whose output the head's
BN re-normalises), the search's pick there is decided by differences of no meaning: it
falls to whatever op is cheapest, or to noise.

A layer's *spread* is max - min of the indicator over the ops it allows (forced-skip
layers have none). A layer is *flat* when its spread is below `frac` (default 5%) of the
largest spread of any layer, or below 1e-6 in absolute terms: its best op then moves the
score by less than a twentieth of what the most decisive layer's does, so its pick is not
the indicator's judgement. Both `search/ea.py` and `search/eval.py` report the spreads and
warn about flat layers; `ea_results.json` keeps them under `indicator_diagnostics`, and
the indicator heatmap marks the flat layers.
"""
from __future__ import annotations

import numpy as np

from utils.spaces import SKIP, SearchSpace

DEFAULT_FRAC = 0.05
ABS_TOL = 1e-6


def layer_spreads(space: SearchSpace, matrix: np.ndarray) -> list[float | None]:
    """max - min of the indicator over each layer's allowed ops (None: nothing to choose)."""
    out: list[float | None] = []
    for i in range(space.num_layers):
        ops = [op for op in space.allowed(i) if op != SKIP]
        if len(ops) < 2:
            out.append(None)
            continue
        values = matrix[i, ops]
        out.append(float(values.max() - values.min()))
    return out


def diagnose(space: SearchSpace, matrix: np.ndarray, frac: float = DEFAULT_FRAC) -> dict:
    """{spreads, threshold, rule, flat_layers, warning}: the report of `search/ea.py`."""
    spreads = layer_spreads(space, np.asarray(matrix, dtype=np.float64))
    known = [v for v in spreads if v is not None]
    top = max(known) if known else 0.0
    threshold = max(ABS_TOL, frac * top)
    flat = [i for i, v in enumerate(spreads) if v is not None and v < threshold]
    rule = (f"a layer is flat when max - min of the indicator over its ops is below "
            f"{frac:g} x the largest layer spread ({top:.4g}) or below {ABS_TOL:g}")
    warning = None
    if flat:
        warning = (f"{len(flat)} of {len(known)} searchable layers have too small an indicator "
                   f"spread to rank their ops (layers {', '.join(map(str, flat))}; spread < "
                   f"{threshold:.3g}): their picks are not the indicator's judgement - train "
                   f"the supernet longer")
    return dict(spreads=spreads, threshold=threshold, frac=frac, rule=rule, flat_layers=flat,
                warning=warning)


def spread_lines(space: SearchSpace, diag: dict) -> list[str]:
    """Printable per-layer spreads, flat layers marked."""
    flat = set(diag["flat_layers"])
    cells = []
    for i, v in enumerate(diag["spreads"]):
        if v is None:
            cells.append(f"L{i} -")
        else:
            cells.append(f"L{i} {v:.4f}" + ("*" if i in flat else ""))
    lines = ["indicator spread per layer (max - min over its ops; * = flat):"]
    for k in range(0, len(cells), 7):
        lines.append("  " + "  ".join(f"{c:<11}" for c in cells[k:k + 7]).rstrip())
    if diag["warning"]:
        lines.append(f"warning: {diag['warning']}")
    return lines


__all__ = ["DEFAULT_FRAC", "layer_spreads", "diagnose", "spread_lines"]
