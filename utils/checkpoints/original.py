"""Read the original BN-NAS release's checkpoints (the spaces that have them: mobilenet).

Which keys mark a space's original checkpoints and how their names translate are facts
of the space class (`reference_prefixes`, `reference_key`, `reference_is_supernet`);
this module finds the space a state_dict belongs to and translates it. Values are
untouched.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from utils.checkpoints.io import clean_state_dict
from utils.spaces import SPACES, SKIP, SearchSpace, SpaceConfig, imagenet_config

# The original release's search logs record no config: they are of this space, at its
# published setting (the release searched nothing else).
RELEASE_SPACE = "mobilenet"


def release_config() -> SpaceConfig:
    """The space config of the original release's files that do not record one."""
    return imagenet_config(RELEASE_SPACE)


def reference_spaces() -> list[type[SearchSpace]]:
    """The registered spaces that have original-release checkpoints."""
    return [cls for _, cls in SPACES.items() if cls.reference_prefixes]


def reference_space(state: Mapping[str, torch.Tensor]) -> type[SearchSpace] | None:
    """The space whose original-release checkpoints `state` looks like, else None."""
    keys = list(clean_state_dict(state).keys())
    for cls in reference_spaces():
        if any(k.startswith(cls.reference_prefixes) for k in keys):
            return cls
    return None


def is_reference_state(state: Mapping[str, torch.Tensor]) -> bool:
    return reference_space(state) is not None


def is_reference_supernet(state: Mapping[str, torch.Tensor]) -> bool:
    """An original-release supernet (else a retrained subnet, or not the release's)."""
    cls = reference_space(state)
    return cls is not None and cls.reference_is_supernet(clean_state_dict(state).keys())


def from_reference(state: Mapping[str, torch.Tensor], arch: Sequence[int] | None = None,
                   space: type[SearchSpace] | None = None) -> dict:
    """Translate an original-release state_dict (supernet, or retrained subnet given its
    `arch`) of `space` (default: the space it looks like) to this project's names.

    A retrained subnet numbers only its non-skip layers, so `arch` maps them back. Keys
    that match nothing raise KeyError naming the first one.
    """
    cls = space or reference_space(state)
    if cls is None:
        raise KeyError("no registered search space has original checkpoints with these keys")
    layer_of = None if arch is None else [i for i, op in enumerate(arch) if op != SKIP]
    out = {}
    for key, value in clean_state_dict(state).items():
        new = cls.reference_key(key, layer_of)
        if new is None:
            raise KeyError(f"unrecognised reference key '{key}'")
        out[new] = value
    return out
