"""Choosing the architecture to retrain and reading subnet weights.

- `published_arch(space)`: the architecture a space's paper reports (the default; its
  class's `published_arch`).
- `arch_from_log(log_dir)`: the best architecture of a search log and its space config.
- `unset_space_defaults(parser)`, `resolve_config(args, base, classes)`: space flags left
  unset fall back to `base` (the search log's or a checkpoint's config), then to the
  setting the space is published at (its class's `imagenet`).
- `read_subnet_checkpoint(path)`: this project's subnet checkpoint or the reference's
  retrained one, as a `SubnetCheckpoint`; anything else is a one-line refusal.
- `subnet_state(ckpt, space, arch)` and `load_subnet_state(model, state, path)`: the
  weights in this project's names, checked against the architecture before loading.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from utils.checkpoints.io import check_config, clean_state_dict, load
from utils.cli.common import UserError
from utils.spaces import (DEFAULT_SPACE, SPACES, SearchSpace, SpaceConfig, make_config,
                          parse_skips)

SPACE_FIELDS = ("space", "input_size", "width_mult", "classes", "stem_stride", "fixed_skips")


def published_arch(space_name: str) -> str:
    """The space's published architecture; a one-line UserError when it has none."""
    arch = SPACES.get(space_name).published_arch
    if arch is None:
        raise UserError(f"the {space_name} space has no published architecture: give one "
                        f"(--model_id, or arch=)")
    return arch


def unset_space_defaults(parser: argparse.ArgumentParser) -> None:
    """Make every space flag default to None, so `resolve_config` can tell what was given."""
    parser.set_defaults(**{f: None for f in SPACE_FIELDS})


def resolve_config(args: argparse.Namespace, base: SpaceConfig | None = None,
                   classes: int | None = None) -> SpaceConfig:
    """The space config: explicit flags, else `base`, else the space's published setting.

    `classes` is the fallback class count when neither a flag nor `base` gives one
    (the number of class folders of the data).
    """
    space = args.space or (base.space if base else DEFAULT_SPACE)
    same_space = base is not None and base.space == space
    published = SPACES.get(space).imagenet

    def pick(name: str, default):
        value = getattr(args, name)
        if value is not None:
            return value
        return getattr(base, name) if same_space else default

    if args.fixed_skips is not None:
        skips = parse_skips(args.fixed_skips)
    else:
        skips = base.fixed_skips if same_space else None  # None: the space's default
    return make_config(space, fixed_skips=skips,
                       input_size=pick("input_size", published["input_size"]),
                       width_mult=pick("width_mult", published["width_mult"]),
                       classes=pick("classes", classes if classes is not None
                                    else published["classes"]),
                       stem_stride=pick("stem_stride", published["stem_stride"]))


def arch_from_log(log_dir: str) -> tuple[tuple[int, ...], SpaceConfig]:
    """(best architecture, its space config) of a search log folder (`search/ea.py`)."""
    if not os.path.isdir(log_dir):
        raise UserError(f"search log folder not found: {log_dir}")
    try:
        from utils.search.log import best_arch  # owned by the search stage
    except ImportError as e:
        raise UserError(f"--arch-from needs utils/search/log.py ({e})") from None
    arch, cfg = best_arch(log_dir)
    if isinstance(cfg, dict):
        cfg = SpaceConfig.from_dict(cfg)
    return tuple(int(a) for a in arch), cfg


@dataclass
class SubnetCheckpoint:
    """A subnet checkpoint as read from disk."""

    path: str
    kind: str  # "subnet" (this project) or "reference" (the original release's retrain)
    state_dict: dict
    config: SpaceConfig | None = None  # None for reference checkpoints
    arch: tuple[int, ...] | None = None  # None for reference checkpoints
    raw: dict = field(default_factory=dict, repr=False)
    reference_space: str | None = None  # the space of a reference checkpoint

    @property
    def best_acc_top1(self) -> float | None:
        v = self.raw.get("best_acc_top1")
        return None if v is None else float(v)

    @property
    def iters(self) -> int | None:
        v = self.raw.get("iters")
        return None if v is None else int(v)


def read_subnet_checkpoint(path: str) -> SubnetCheckpoint:
    obj = load(path)
    kind = obj.get("kind")
    if kind == "subnet":
        try:
            cfg = SpaceConfig.from_dict(obj["config"])
            arch = tuple(int(a) for a in obj["arch"])
            state = clean_state_dict(obj["state_dict"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path} is a damaged subnet checkpoint "
                            f"({type(e).__name__}: {e})") from None
        return SubnetCheckpoint(path, "subnet", state, cfg, arch, obj)
    if kind is not None:
        raise UserError(f"{path} is a {kind} checkpoint, not a subnet checkpoint "
                        f"(retrain and evaluate a subnet, or search the supernet first)")
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a subnet checkpoint (no state_dict)")
    from utils.checkpoints.original import reference_space
    state = clean_state_dict(state)
    cls = reference_space(state)
    if cls is None:
        raise UserError(f"{path} is neither this project's subnet checkpoint nor the "
                        f"reference's retrained one")
    if cls.reference_is_supernet(state.keys()):
        raise UserError(f"{path} is a reference supernet checkpoint, not a retrained subnet")
    return SubnetCheckpoint(path, "reference", state, None, None, obj, cls.name)


def subnet_state(ckpt: SubnetCheckpoint, space: SearchSpace, arch: Sequence[int]) -> dict:
    """The checkpoint's weights in this project's names, refused if for another net."""
    arch = tuple(int(a) for a in arch)
    if ckpt.kind == "subnet":
        check_config(ckpt.config, space.config, ckpt.path)
        if ckpt.arch != arch:
            raise UserError(f"checkpoint {ckpt.path} is for architecture "
                            f"'{space.format(ckpt.arch)}', not '{space.format(arch)}'")
        return dict(ckpt.state_dict)
    from utils.checkpoints.original import from_reference, reference_space, reference_spaces
    found = ckpt.reference_space or getattr(reference_space(ckpt.state_dict), "name", None)
    if space.config.space != found:
        names = " and ".join(cls.name for cls in reference_spaces())
        raise UserError(f"reference checkpoints exist for the {names} space only, "
                        f"not {space.config.space}")
    try:
        return from_reference(ckpt.state_dict, arch, SPACES.get(space.config.space))
    except KeyError as e:
        raise UserError(f"{ckpt.path}: {e.args[0]} (is --model_id the architecture it was "
                        f"trained with?)") from None


def load_subnet_state(model: nn.Module, state: dict, path: str, arch_text: str = "") -> None:
    """Load `state` strictly, first turning any key or shape mismatch into one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: "
                         f"{tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        target = f"architecture '{arch_text}'" if arch_text else "this network"
        raise UserError(f"checkpoint {path} does not fit {target}: {', '.join(parts)}")
    model.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v
                           for k, v in state.items()})
