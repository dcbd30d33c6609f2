"""Read the original BN-NAS release's checkpoints (mobilenet space only).

The reference names modules `conv_bn`, `MBConv_ratio_1`, `features.L._ops.O.conv.N`,
`conv_1x1_bn` and `classifier.{0|1}`; this project names them `stem.first`,
`stem.fixed`, `layers.L.ops.O.{expand,depthwise,project}`, `head.conv` and
`head.classifier`. These functions translate key names; values are untouched.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

from utils.checkpoints.io import clean_state_dict

# Reference Sequential index -> our path inside an inverted residual (conv, BN pairs).
_OP_IDX = {"0": "expand.conv", "1": "expand.bn", "3": "depthwise.conv", "4": "depthwise.bn",
           "6": "project.conv", "7": "project.bn"}
_FIXED_IDX = {"0": "depthwise.conv", "1": "depthwise.bn", "3": "project.conv", "4": "project.bn"}
_PAIR = {"0": "conv", "1": "bn"}


def is_reference_state(state: Mapping[str, torch.Tensor]) -> bool:
    keys = clean_state_dict(state).keys()
    return any(k.startswith(("conv_bn.", "MBConv_ratio_1.", "conv_1x1_bn.")) for k in keys)


def _rename(key: str, layer_of: Sequence[int] | None) -> str | None:
    m = re.match(r"^conv_bn\.(\d)\.(.+)$", key)
    if m and m.group(1) in _PAIR:
        return f"stem.first.{_PAIR[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^MBConv_ratio_1\.conv\.(\d)\.(.+)$", key)
    if m and m.group(1) in _FIXED_IDX:
        return f"stem.fixed.{_FIXED_IDX[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^conv_1x1_bn\.(\d)\.(.+)$", key)
    if m and m.group(1) in _PAIR:
        return f"head.conv.{_PAIR[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^classifier\.\d\.(weight|bias)$", key)
    if m:
        return f"head.classifier.{m.group(1)}"
    m = re.match(r"^features\.(\d+)\._ops\.(\d+)\.conv\.(\d)\.(.+)$", key)  # supernet
    if m and m.group(3) in _OP_IDX:
        return f"layers.{m.group(1)}.ops.{m.group(2)}.{_OP_IDX[m.group(3)]}.{m.group(4)}"
    m = re.match(r"^features\.(\d+)\.conv\.(\d)\.(.+)$", key)  # retrained subnet
    if m and m.group(2) in _OP_IDX and layer_of is not None:
        j = int(m.group(1))
        if j >= len(layer_of):
            return None
        return f"layers.{layer_of[j]}.{_OP_IDX[m.group(2)]}.{m.group(3)}"
    return None


def from_reference(state: Mapping[str, torch.Tensor], arch: Sequence[int] | None = None) -> dict:
    """Translate a reference state_dict (supernet, or retrained subnet given its `arch`).

    A retrained subnet numbers only its non-skip layers, so `arch` maps them back. Keys
    that match nothing raise KeyError naming the first one.
    """
    layer_of = None if arch is None else [i for i, op in enumerate(arch) if op != -1]
    out = {}
    for key, value in clean_state_dict(state).items():
        new = _rename(key, layer_of)
        if new is None:
            raise KeyError(f"unrecognised reference key '{key}'")
        # A 1x1 conv from the reference can be stored as Linear-shaped; ours are 4-D.
        out[new] = value
    return out
