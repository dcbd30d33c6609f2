"""FLOPs/params ranges of a space and the default FLOPs limit of a search.

The published limits (SPEC.md section 4) are for the ImageNet setting: 475M for
`mobilenet` (forced skips 1,5,6,9), 330M for `shufflenet`. Any other config (the demo's
32x32 inputs, other widths or class counts, other forced skips) gets the limit at the same
relative position between its cheapest and costliest architecture:

    limit = min + (475M - min_imagenet) / (max_imagenet - min_imagenet) * (max - min)
"""
from __future__ import annotations

import numpy as np

from utils.flops import FlopsTable, load_table
from utils.spaces import IMAGENET, SearchSpace, SpaceConfig, get_space, make_config

PUBLISHED_LIMITS_M = {"mobilenet": 475.0, "shufflenet": 330.0}


def cost_range(space: SearchSpace, table: FlopsTable, what: str = "flops") -> tuple[int, int]:
    """(cheapest, costliest) total over the space's allowed choices."""
    m = table.flops if what == "flops" else table.params
    base = table.base_flops if what == "flops" else table.base_params
    mask = space.allowed_mask()
    lo = sum(int(m[i][mask[i]].min()) for i in range(space.num_layers))
    hi = sum(int(m[i][mask[i]].max()) for i in range(space.num_layers))
    return base + lo, base + hi


def cheapest_arch(space: SearchSpace, table: FlopsTable, what: str = "flops") -> tuple[int, ...]:
    m = table.flops if what == "flops" else table.params
    mask = space.allowed_mask()
    n_cols = m.shape[1]
    arch = []
    for i in range(space.num_layers):
        cols = np.flatnonzero(mask[i])
        c = int(cols[np.argmin(m[i, cols])])
        arch.append(-1 if c == n_cols - 1 else c)
    return tuple(arch)


def default_flops_limit(config: SpaceConfig) -> tuple[float, str]:
    """(limit in MFLOPs, how it was chosen) for `config`."""
    published = PUBLISHED_LIMITS_M[config.space]
    ref_cfg = make_config(config.space, **IMAGENET)
    if config == ref_cfg:
        return published, f"the published {published:g}M of the ImageNet setting"
    ref_lo, ref_hi = cost_range(get_space(ref_cfg), load_table(ref_cfg))
    frac = (published * 1e6 - ref_lo) / (ref_hi - ref_lo)
    lo, hi = cost_range(get_space(config), load_table(config))
    limit = (lo + frac * (hi - lo)) / 1e6
    return limit, (f"{frac:.1%} of the way from the cheapest ({lo / 1e6:.2f}M) to the costliest "
                   f"({hi / 1e6:.2f}M) architecture, as {published:g}M is at the ImageNet setting")
