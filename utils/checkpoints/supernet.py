"""Read a supernet checkpoint for search: ours (kind="supernet") or the reference release's.

A reference BN-NAS supernet ({state_dict with `module.features...` keys, iter, seed,
operations}) is of the space whose original-release keys it has (mobilenet), at that
space's published setting; its keys are translated with
`utils.checkpoints.original.from_reference`. Anything else (a subnet, a search log, a bare tensor, a
random file, weights that do not fit their config) is refused with a one-line UserError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from utils.checkpoints import io as checkpoint
from utils.cli.common import UserError
from utils.checkpoints.original import from_reference, reference_space
from utils.spaces import ConfigError, SpaceConfig, get_space, imagenet_config


@dataclass
class SupernetCheckpoint:
    path: str
    config: SpaceConfig
    state_dict: dict
    train_all: bool | None  # None: unknown (a reference checkpoint does not say)
    reference: bool
    input_format: str | None  # the input convention it was trained with, when recorded
    info: dict = field(default_factory=dict)  # iter, epoch, seed when present
    classes: list[str] | None = None  # class names (output i = classes[i]) when recorded
    resize_mode: str | None = None  # the --resize-mode it was trained with, when recorded
    dataset: str | None = None  # the --dataset it was trained on (ours; older: imagefolder)


def _check_weights(cfg: SpaceConfig, state: dict, path: str) -> None:
    """Refuse weights whose layer/op structure or indicator BNs do not fit `cfg`.

    A cheap check (building even a meta-device supernet costs seconds): every
    `layers.i.ops.op.` key must name a layer and op of the space, and every indicator BN
    must be there as a non-empty vector. Accuracy scoring loads the full state strictly.
    """
    space = get_space(cfg)
    pattern = re.compile(r"^layers\.(\d+)\.ops\.(\d+)\.")
    for key in state:
        m = pattern.match(key)
        if m and (int(m.group(1)) >= space.num_layers or int(m.group(2)) >= space.num_ops):
            raise UserError(f"{path} does not fit the supernet of its config "
                            f"({cfg.describe()}): unexpected weight '{key}'")
    for row in space.indicator_param_names():
        for prefix in row:
            w = state.get(prefix + ".weight")
            if w is None:
                raise UserError(f"{path} does not fit the supernet of its config "
                                f"({cfg.describe()}): indicator BN '{prefix}.weight' is missing")
            if w.dim() != 1 or w.numel() == 0:
                raise UserError(f"{path}: indicator BN '{prefix}.weight' has shape "
                                f"{tuple(w.shape)}, not a vector of channel gammas")


def load_supernet(path: str) -> SupernetCheckpoint:
    ck = checkpoint.load(path)
    kind = ck.get("kind")
    if kind is not None and kind != "supernet":
        hint = {"subnet": "a retrained subnet", "search": "a search log"}.get(kind, f"a '{kind}' checkpoint")
        raise UserError(f"{path} is {hint}, not a supernet checkpoint "
                        f"(search needs the checkpoint.pth.tar that supernet/main.py writes)")
    state = ck.get("state_dict")
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a supernet checkpoint (no state_dict of tensors)")
    if kind == "supernet":
        try:
            cfg = SpaceConfig.from_dict(ck["config"])
        except (KeyError, TypeError, ConfigError) as e:
            raise UserError(f"{path} has no usable space config: {e}") from None
        state = checkpoint.clean_state_dict(state)
        args = ck.get("args") or {}
        train_all = bool(ck.get("train_all", args.get("train_all", False)))
        input_format = args.get("input_format") if isinstance(args, dict) else None
        resize_mode = args.get("resize_mode") if isinstance(args, dict) else None
        classes = ck.get("classes")
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            classes = None
        reference = False
    elif (ref := reference_space(state)) is not None:
        keys = checkpoint.clean_state_dict(state)
        if not ref.reference_is_supernet(keys):
            raise UserError(f"{path} is a reference retrained subnet, not a supernet checkpoint")
        try:
            state = from_reference(state, space=ref)
        except KeyError as e:
            raise UserError(f"{path}: {e.args[0]}") from None
        cfg = imagenet_config(ref.name)
        train_all, input_format, reference = None, "bgr255", True
        classes, resize_mode = None, None
    else:
        raise UserError(f"{path} is not a supernet checkpoint (no 'kind' and no reference "
                        f"BN-NAS keys)")
    _check_weights(cfg, state, path)
    info = {k: ck[k] for k in ("iter", "epoch", "seed") if isinstance(ck.get(k), (int, float))}
    dataset = ((args.get("dataset") if isinstance(args, dict) else None) or "imagefolder"
               ) if kind == "supernet" else None
    return SupernetCheckpoint(path, cfg, state, train_all, reference, input_format, info,
                              classes, resize_mode, dataset)
