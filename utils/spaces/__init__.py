"""Search spaces: the `SPACES` registry of space classes and the builders over it.

    space = create_space(make_config("mobilenet", input_size=32, classes=10))
    arch = space.parse("3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2")
    net = space.subnet(arch)

A space is one class registered with `@SPACES.register` (the built-ins in mobilenet.py
and shufflenet.py, a user's in a `--plugin` file); every fact about it (published
architecture, FLOPs limit and setting, default skips, original checkpoints) is on the
class, read with `SPACES.get(name)`.
"""
from __future__ import annotations

from utils.registry import Registry

from .base import (DEFAULT_SPACE, IMAGENET, SKIP, ArchError, ConfigError, LayerSpec,
                   SearchSpace, SpaceConfig, Subnet, Supernet, column_ops, op_columns,
                   path_state_dict)

SPACES: Registry[type[SearchSpace]] = Registry("search space")

# The built-in spaces register themselves on import (after SPACES exists).
from .mobilenet import MobileNetSpace  # noqa: E402,F401
from .shufflenet import ShuffleNetSpace  # noqa: E402,F401


def _space_class(name: str) -> type[SearchSpace]:
    # ConfigError (a ValueError), as a config's other faults: callers catch that.
    if name not in SPACES:
        raise ConfigError(f"unknown search space '{name}' (choose from "
                          f"{', '.join(SPACES.names())})")
    return SPACES.get(name)


def make_config(space: str = DEFAULT_SPACE, fixed_skips=None, **kwargs) -> SpaceConfig:
    """A SpaceConfig with the space's default forced skips unless `fixed_skips` is given."""
    cls = _space_class(space)
    if fixed_skips is None:
        fixed_skips = cls.default_fixed_skips
    return SpaceConfig(space=space, fixed_skips=tuple(int(i) for i in fixed_skips), **kwargs)


def imagenet_config(space: str = DEFAULT_SPACE, **kwargs) -> SpaceConfig:
    """The config of the setting `space` is published at (its class's `imagenet`)."""
    return make_config(space, **{**_space_class(space).imagenet, **kwargs})


def create_space(config: SpaceConfig | dict | str) -> SearchSpace:
    """The space object of `config` (a SpaceConfig, its dict, or a space name: defaults)."""
    if isinstance(config, str):
        config = make_config(config)
    elif isinstance(config, dict):
        config = SpaceConfig.from_dict(config)
    return _space_class(config.space)(config)


get_space = create_space  # the older name, used throughout


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


__all__ = ["SKIP", "DEFAULT_SPACE", "ArchError", "ConfigError", "LayerSpec", "SearchSpace",
           "SpaceConfig", "Subnet", "Supernet", "SPACES", "IMAGENET", "make_config",
           "imagenet_config", "create_space", "get_space", "parse_skips", "path_state_dict",
           "op_columns", "column_ops"]
