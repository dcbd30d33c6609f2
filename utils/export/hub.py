"""Ready-to-use networks from a space, an architecture and/or a checkpoint.

The logic behind the torch.hub entries (`hubconf.py`) and the exporter (`utils/export/writers.py`):

    loaded = build_subnet()                                  # the published BN-NAS net
    loaded = build_subnet(checkpoint="eval-x/best.pth.tar")  # config + arch from it
    loaded = build_subnet(arch="3 -1 0 ...", checkpoint="original_retrained.pth.tar")
    loaded.net(x)                                            # an eval-mode Subnet

A checkpoint is this project's (kind="subnet", from retrain/train_from_scratch.py) or the
original BN-NAS release's retrained one (its module names are translated by
utils/checkpoints/original.py; it does not record its architecture, so `arch` defaults to the
published one and the weights' shapes are checked against it). Space config arguments
not given come from the checkpoint, else the ImageNet defaults; given ones that do not fit
the checkpoint, and a given architecture other than the checkpoint's, are refused in one
line (UserError), as everything else that is the caller's to fix.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from utils.cli.common import UserError
from utils.data.datasets import DATASETS, DEFAULT_DATASET, get_dataset
from utils.data.transforms import VAL_CROP_FRACTION, recorded_crop_pct
from utils.spaces import SPACES, SearchSpace, SpaceConfig, Supernet, get_space, imagenet_config

# Space config arguments the entries take (SpaceConfig fields but the space name).
CONFIG_KEYS = ("input_size", "width_mult", "classes", "stem_stride", "fixed_skips")

# Input conventions (utils/data/loaders.py): this project's default, and the original's.
RGB, BGR255 = "rgb", "bgr255"


@dataclass
class LoadedSubnet:
    """A built subnet and what is known about it (for the architecture card)."""

    net: nn.Module
    space: SearchSpace
    arch: tuple[int, ...]
    config: SpaceConfig
    arch_source: str  # where the architecture came from
    input_format: str = RGB  # rgb (the dataset's mean/std) or bgr255 (the original's)
    resize_mode: str = "antialias"  # the validation resize the weights were measured with
    dataset: str = "imagefolder"  # what it was trained on: rgb's mean/std are this dataset's
    crop_pct: float = 0.875  # the validation centre crop fraction it was measured with
    class_names: list[str] | None = None  # output i = class_names[i], when recorded
    top1: float | None = None  # valid_acc_top1 of exactly these weights, when recorded
    checkpoint: str | None = None  # None: random init
    kind: str | None = None  # "subnet" (ours), "reference" (the original's), None
    iters: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class LoadedSupernet:
    net: Supernet
    space: SearchSpace
    config: SpaceConfig
    checkpoint: str | None = None
    input_format: str = RGB
    class_names: list[str] | None = None
    reference: bool = False


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise UserError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None


def _skips_text(value: Any) -> str:
    """fixed_skips as utils.spaces.parse_skips reads it: "1,5,6,9", or "none"."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    try:
        items = [_as_int("fixed_skips", v) for v in value]
    except TypeError:
        raise UserError(f"fixed_skips must be layer indices (e.g. [1, 5, 6, 9] or "
                        f"'1,5,6,9'), got {value!r}") from None
    return ",".join(map(str, items)) or "none"


def config_request(space: str | None, config: dict) -> argparse.Namespace:
    """The given space arguments as `utils.checkpoints.subnet.resolve_config` reads them (None:
    not given). Unknown names and badly typed values are refused in one line."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise UserError(f"unknown space config argument '{unknown[0]}' (known: "
                        f"{', '.join(CONFIG_KEYS)}, dropout)")
    if space is not None and not isinstance(space, str):
        raise UserError(f"space must be a name ({' or '.join(SPACES.names())}), got {space!r}")
    ns = argparse.Namespace(space=space, **{k: None for k in CONFIG_KEYS})
    for key, value in config.items():
        if value is None:
            continue
        if key == "width_mult":
            value = _as_float(key, value)
        elif key == "fixed_skips":
            value = _skips_text(value)
        else:
            value = _as_int(key, value)
        setattr(ns, key, value)
    return ns


def _dropout(value: Any, default: float) -> float:
    if value is None:
        return default
    p = _as_float("dropout", value)
    if not 0.0 <= p < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {value!r}")
    return p


def _class_names(raw: dict, classes: int) -> list[str] | None:
    names = raw.get("classes")
    if isinstance(names, list) and len(names) == classes and all(
            isinstance(c, str) for c in names):
        return list(names)
    return None


def _top1_of_weights(raw: dict, kind: str) -> float | None:
    """The validation top-1 of exactly the stored weights, when the checkpoint says.

    best.pth.tar holds its best iteration (iters == best_iters); checkpoint.pth.tar holds
    the latest one, whose own accuracy is `last_eval` when that validated it. The
    original's retrained checkpoints store their best weights with best_acc_top1.
    """
    def number(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    if kind == "reference":
        return number(raw.get("best_acc_top1"))
    iters, best = raw.get("iters"), number(raw.get("best_acc_top1"))
    if best is not None and best >= 0 and iters is not None and iters == raw.get("best_iters"):
        return best
    last = raw.get("last_eval") or {}
    if isinstance(last, dict) and iters is not None and last.get("iters") == iters:
        return number(last.get("top1"))
    return None


def build_subnet(space: str | None = None, arch: str | Sequence[int] | None = None,
                 checkpoint: str | None = None, dropout: float | None = None,
                 dataset: str | None = None, crop_pct: float | None = None,
                 **config: Any) -> LoadedSubnet:
    """The subnet of `arch` (default: the checkpoint's, else the space's published one),
    with the checkpoint's weights when given (else PyTorch's default init), in eval mode.

    `space` defaults to the checkpoint's, else mobilenet (any registered space name);
    `config` takes input_size, width_mult, classes, stem_stride, fixed_skips (as the
    retrain script's flags; unset: the checkpoint's, else the space's published setting).
    `dataset` (a registered name: its mean/std describe rgb input) and `crop_pct` (the
    validation crop fraction) default to what the checkpoint records, else imagefolder
    and 0.875 (also for the original's checkpoints).
    """
    from utils.checkpoints.subnet import (load_subnet_state, published_arch, read_subnet_checkpoint,
                                 resolve_config, subnet_state)

    request = config_request(space, config)
    dataset, crop_pct = _data_request(dataset, crop_pct)
    loaded = read_subnet_checkpoint(checkpoint) if checkpoint is not None else None
    base = None
    if loaded is not None:
        base = (loaded.config if loaded.kind == "subnet" else
                imagenet_config(loaded.reference_space))
    cfg = resolve_config(request, base)
    sp = get_space(cfg)
    if loaded is not None and loaded.kind == "subnet":
        from utils.checkpoints.io import check_config
        check_config(loaded.config, cfg, loaded.path)
    if arch is not None:
        if not isinstance(arch, str):
            try:
                arch = [_as_int("arch", a) for a in arch]
            except TypeError:
                raise UserError(f"arch must be a string like '3 -1 0 4 ...' or a list of "
                                f"ints, got {arch!r}") from None
        arch_t, source = sp.parse(arch), "given"
        if loaded is not None and loaded.kind == "subnet" and loaded.arch != arch_t:
            raise UserError(f"checkpoint {loaded.path} is for architecture "
                            f"'{sp.format(loaded.arch)}', not the given '{sp.format(arch_t)}'")
    elif loaded is not None and loaded.kind == "subnet":
        arch_t, source = sp.validate(loaded.arch), f"checkpoint {loaded.path}"
    else:
        try:
            arch_t = sp.parse(published_arch(cfg.space))
        except ValueError as e:
            raise UserError(f"the default architecture (the published {cfg.space} one) does "
                            f"not fit {cfg.describe()} ({e}): give arch") from None
        source = "published architecture (default)"
    raw = loaded.raw if loaded is not None else {}
    saved_args = raw.get("args") if isinstance(raw.get("args"), dict) else {}
    net = sp.subnet(arch_t, dropout=_dropout(
        dropout if dropout is not None else saved_args.get("dropout"), sp.default_dropout))
    out = LoadedSubnet(net=net, space=sp, arch=tuple(arch_t), config=cfg, arch_source=source)
    if loaded is not None:
        load_subnet_state(net, subnet_state(loaded, sp, arch_t), loaded.path, sp.format(arch_t))
        out.checkpoint, out.kind, out.iters = loaded.path, loaded.kind, loaded.iters
        out.top1 = _top1_of_weights(raw, loaded.kind)
        if loaded.kind == "reference":
            # The original fed BGR 0-255 images resized by OpenCV's INTER_LINEAR.
            out.input_format, out.resize_mode = BGR255, "linear"
        else:
            out.input_format = saved_args.get("input_format") or RGB
            out.resize_mode = saved_args.get("resize_mode") or "antialias"
            out.class_names = _class_names(raw, cfg.classes)
            if dataset is None:  # (a plug-in's name need not be registered to build it)
                dataset = saved_args.get("dataset") or DEFAULT_DATASET
            if crop_pct is None:
                crop_pct = recorded_crop_pct(saved_args)
    out.dataset = dataset or DEFAULT_DATASET
    out.crop_pct = VAL_CROP_FRACTION if crop_pct is None else crop_pct
    net.eval()
    return out


def _data_request(dataset: Any, crop_pct: Any) -> tuple[str | None, float | None]:
    """The given dataset and crop fraction, checked (None: not given); one line if bad."""
    from utils.data.transforms import VAL_CROP_RANGE
    if dataset is not None:
        if not isinstance(dataset, str):
            raise UserError(f"dataset must be a name ({', '.join(DATASETS.names())}), got "
                            f"{dataset!r}")
        DATASETS.get(dataset)  # unknown: one line listing the choices
    if crop_pct is not None:
        value = _as_float("crop_pct", crop_pct)
        lo, hi = VAL_CROP_RANGE
        if not lo <= value <= hi:  # (nan fails too)
            raise UserError(f"crop_pct must be in [{lo}, {hi}], got {crop_pct!r}")
        crop_pct = value
    return dataset, crop_pct


def _load_supernet_state(net: nn.Module, state: dict, path: str) -> None:
    """Load strictly but for BN step counters (the original's supernets may lack them)."""
    own = net.state_dict()
    state = dict(state)
    for key in own:
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = own[key]
    from utils.checkpoints.subnet import load_subnet_state
    load_subnet_state(net, state, path)


def build_supernet(space: str | None = None, checkpoint: str | None = None,
                   dropout: float | None = None, **config: Any) -> LoadedSupernet:
    """A supernet (`forward(x, arch)`) of the space config, in eval mode; with
    `checkpoint` (ours, kind="supernet", or the original's) its weights and config."""
    from utils.checkpoints.io import check_config
    from utils.checkpoints.subnet import resolve_config

    request = config_request(space, config)
    ck = None
    if checkpoint is not None:
        from utils.checkpoints.supernet import load_supernet
        ck = load_supernet(checkpoint)
    cfg = resolve_config(request, ck.config if ck is not None else None)
    if ck is not None:
        check_config(ck.config, cfg, ck.path)
    sp = get_space(cfg)
    net = sp.supernet(dropout=_dropout(dropout, 0.0))
    out = LoadedSupernet(net=net, space=sp, config=cfg)
    if ck is not None:
        _load_supernet_state(net, ck.state_dict, ck.path)
        out.checkpoint, out.reference = ck.path, ck.reference
        out.input_format = ck.input_format or RGB
        out.class_names = ck.classes if ck.classes and len(ck.classes) == cfg.classes else None
    net.eval()
    return out


def describe_input(input_format: str, dataset: str | None = None) -> dict:
    """How images must be prepared for the network (the card's `input` block): rgb
    normalises with `dataset`'s mean/std (None: imagefolder's, ImageNet's), as training
    did (utils.data.loaders.prepare_batch)."""
    if input_format == BGR255:
        return dict(format=BGR255, channel_order="BGR", value_range=[0, 255],
                    mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                    note="BGR channels, pixel values 0-255 as float, no normalisation "
                         "(the original release's convention)")
    spec = get_dataset(dataset)
    return dict(format=RGB, channel_order="RGB", value_range=[0, 1],
                mean=list(spec.mean), std=list(spec.std),
                note="RGB channels scaled to 0-1, then (x - mean) / std per channel")
