"""Search spaces: `get_space(config)` returns the space object that builds networks.

    space = get_space(make_config("mobilenet", input_size=32, classes=10))
    arch = space.parse("3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2")
    net = space.subnet(arch)
"""
from __future__ import annotations

from .base import (SKIP, ArchError, ConfigError, LayerSpec, SearchSpace, SpaceConfig, Subnet,
                   Supernet, path_state_dict)
from .mobilenet import MobileNetSpace
from .shufflenet import ShuffleNetSpace

SPACES: dict[str, type[SearchSpace]] = {s.name: s for s in (MobileNetSpace, ShuffleNetSpace)}

# The ImageNet setting each space is published at.
IMAGENET = dict(input_size=224, width_mult=1.0, classes=1000, stem_stride=2)


def make_config(space: str = "mobilenet", fixed_skips=None, **kwargs) -> SpaceConfig:
    """A SpaceConfig with the space's default forced skips unless `fixed_skips` is given."""
    if space not in SPACES:
        raise ConfigError(f"unknown search space '{space}' (choose from {', '.join(SPACES)})")
    if fixed_skips is None:
        fixed_skips = SPACES[space].default_fixed_skips
    return SpaceConfig(space=space, fixed_skips=tuple(int(i) for i in fixed_skips), **kwargs)


def get_space(config: SpaceConfig | dict | str) -> SearchSpace:
    if isinstance(config, str):
        config = make_config(config)
    elif isinstance(config, dict):
        config = SpaceConfig.from_dict(config)
    if config.space not in SPACES:
        raise ConfigError(f"unknown search space '{config.space}' (choose from {', '.join(SPACES)})")
    return SPACES[config.space](config)


def parse_skips(text: str | None):
    """`--fixed-skips "1,5,6,9"`; "none" or "" means no forced skips; None means default."""
    if text is None:
        return None
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"--fixed-skips must be layer indices like '1,5,6,9', got '{text}'") from None


__all__ = ["SKIP", "ArchError", "ConfigError", "LayerSpec", "SearchSpace", "SpaceConfig",
           "Subnet", "Supernet", "SPACES", "IMAGENET", "make_config", "get_space",
           "parse_skips", "path_state_dict"]
