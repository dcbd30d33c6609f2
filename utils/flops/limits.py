"""FLOPs/params ranges of a space and the default FLOPs limit of a search.

A space's published limit (its class's `published_limit_m`; docs/method.md, "Counting
FLOPs and parameters": 475M for `mobilenet` with forced skips 1,5,6,9, 330M for
`shufflenet`) is for the setting it is published at (its class's `imagenet`). Any other
config (the demo's 32x32 inputs, other widths or class counts, other forced skips) gets
the limit at the same relative position between its cheapest and costliest architecture:

    limit = min + (475M - min_imagenet) / (max_imagenet - min_imagenet) * (max - min)

A space with no published limit gets the limit at UNPUBLISHED_FRACTION of its range.
A limit given on the command line goes through `parse_limit`, which reads both our
millions (475, 475M) and the reference's raw multiply-adds (475e6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from utils.cli.common import UserError
from utils.flops.table import FlopsTable, load_table
from utils.spaces import SPACES, SearchSpace, SpaceConfig, get_space, imagenet_config

# Where the default limit sits between the cheapest and the costliest architecture of a
# space that publishes no limit: the middle, so that the limit binds but leaves choice.
UNPUBLISHED_FRACTION = 0.5


def cost_range(space: SearchSpace, table: FlopsTable, what: str = "flops") -> tuple[int, int]:
    """(cheapest, costliest) total over the space's allowed choices."""
    m = table.flops if what == "flops" else table.params
    base = table.base_flops if what == "flops" else table.base_params
    mask = space.allowed_mask()
    lo = sum(int(m[i][mask[i]].min()) for i in range(space.num_layers))
    hi = sum(int(m[i][mask[i]].max()) for i in range(space.num_layers))
    return base + lo, base + hi


def default_flops_limit(config: SpaceConfig) -> tuple[float, str]:
    """(limit in MFLOPs, how it was chosen) for `config`."""
    published = SPACES.get(config.space).published_limit_m
    if published is None:
        lo, hi = cost_range(get_space(config), load_table(config))
        limit = (lo + UNPUBLISHED_FRACTION * (hi - lo)) / 1e6
        return limit, (f"{UNPUBLISHED_FRACTION:.1%} of the way from the cheapest "
                       f"({lo / 1e6:.2f}M) to the costliest ({hi / 1e6:.2f}M) architecture "
                       f"(the {config.space} space publishes no limit)")
    ref_cfg = imagenet_config(config.space)
    if config == ref_cfg:
        return published, f"the published {published:g}M of the ImageNet setting"
    ref_lo, ref_hi = cost_range(get_space(ref_cfg), load_table(ref_cfg))
    # Every architecture costing the same leaves no place to keep: then all of them fit.
    frac = (published * 1e6 - ref_lo) / (ref_hi - ref_lo) if ref_hi > ref_lo else 1.0
    lo, hi = cost_range(get_space(config), load_table(config))
    limit = (lo + frac * (hi - lo)) / 1e6
    return limit, (f"{frac:.1%} of the way from the cheapest ({lo / 1e6:.2f}M) to the costliest "
                   f"({hi / 1e6:.2f}M) architecture, as {published:g}M is at the ImageNet setting")


# ---- reading --flops-limit / --params-limit ----------------------------------------------

# A plain number at least this large is a raw count (the reference's `--flops-limit 475e6`):
# 1e5 M would be 1e11 multiply-adds, far beyond any architecture of these spaces, while
# 0.1M is below the cheapest even of the small demo and test configs, so no useful limit
# has two readings (a raw count read as millions by mistake gets the excludes-nothing
# warning).
RAW_COUNT_FROM = 1e5


@dataclass(frozen=True)
class LimitArg:
    """A parsed --flops-limit / --params-limit: the value in millions and how it was read."""
    millions: float
    count: float  # the same limit as a raw count (multiply-adds or parameters)
    given: str  # the text as the user wrote it
    reading: str  # "millions" or "count"
    explained: str  # e.g. "--flops-limit 475e6 read as multiply-adds"


_LIMIT_WORDS = {"flops": ("--flops-limit", "MFLOPs", "multiply-adds"),
                "params": ("--params-limit", "M parameters", "a parameter count")}


def parse_limit(value, what: str = "flops") -> LimitArg:
    """`475`, `475M`, `475m`, `475e6`, `475000000` all read as 475 millions (MFLOPs or M
    parameters): an `M` suffix means millions; a plain number >= RAW_COUNT_FROM is a raw
    count (divided by 1e6); a smaller one is millions. inf, nan, <= 0 and non-numbers
    raise UserError."""
    flag, unit, raw = _LIMIT_WORDS[what]
    given = str(value).strip()
    text, suffix = (given[:-1].rstrip(), True) if given[-1:] in ("M", "m") else (given, False)
    hint = (f"give {unit} (e.g. 475 or 475M) or a raw count as the reference takes it "
            f"(e.g. 475e6)" if what == "flops" else
            f"give {unit} (e.g. 5.2 or 5.2M) or a raw count (e.g. 5.2e6)")
    try:
        number = float(text)
    except ValueError:
        raise UserError(f"{flag} {given!r} is not a number; {hint}") from None
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{flag} must be a positive finite number, got {given!r}; {hint}")
    if suffix:
        return LimitArg(number, number * 1e6, given, "millions",
                        f"{flag} {given} read as {unit} (M suffix)")
    if number >= RAW_COUNT_FROM:
        return LimitArg(number / 1e6, number, given, "count", f"{flag} {given} read as {raw}")
    return LimitArg(number, number * 1e6, given, "millions", f"{flag} {given} read as {unit}")
