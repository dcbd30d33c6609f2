"""The MobileNetV2-like space of ABS/AngleNAS ("GPU" setting), used by the BN-NAS results.

Candidate ops: 0 k3e3, 1 k3e6, 2 k5e3, 3 k5e6, 4 k7e3, 5 k7e6; -1 is identity.

The original BN-NAS release covers this space: its checkpoints name modules `conv_bn`,
`MBConv_ratio_1`, `features.L._ops.O.conv.N` (a supernet) or `features.J.conv.N` (a
retrained subnet, J counting non-skip layers), `conv_1x1_bn` and `classifier.{0|1}`;
this project names them `stem.first`, `stem.fixed`, `layers.L[.ops.O].{expand,depthwise,
project}`, `head.conv` and `head.classifier` (`MobileNetSpace.reference_key`).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

from . import SPACES
from .base import ConvBNAct, Head, LayerSpec, SearchSpace, conv_out, make_divisible

OPS = ((3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))  # (kernel, expansion)
# (out channels, layers, first stride) per stage
STAGES = ((32, 4, 2), (56, 4, 2), (112, 4, 2), (128, 4, 1), (256, 4, 2), (432, 1, 1))
STEM, FIXED, HEAD = 40, 24, 1728


class InvertedResidual(nn.Module):
    """pw expand -> dw kxk -> pw linear, residual when shapes allow."""

    def __init__(self, inp: int, out: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        hidden = inp * expansion
        if expansion != 1:
            self.expand = ConvBNAct(inp, hidden, 1, act=nn.ReLU6)
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.ReLU6)
        self.project = ConvBNAct(hidden, out, 1, act=None)  # project.bn is the indicator
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if hasattr(self, "expand") else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


# Original-release Sequential index -> our path inside an inverted residual (conv, BN).
_OP_IDX = {"0": "expand.conv", "1": "expand.bn", "3": "depthwise.conv", "4": "depthwise.bn",
           "6": "project.conv", "7": "project.bn"}
_FIXED_IDX = {"0": "depthwise.conv", "1": "depthwise.bn", "3": "project.conv", "4": "project.bn"}
_PAIR = {"0": "conv", "1": "bn"}


@SPACES.register
class MobileNetSpace(SearchSpace):
    name = "mobilenet"
    op_names = tuple(f"k{k}e{e}" for k, e in OPS)
    default_fixed_skips = (1, 5, 6, 9)
    default_dropout = 0.2
    # docs/method.md, "Counting FLOPs and parameters"; the reference retrain script's
    # default --model_id.
    published_arch = "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"  # BN-NAS
    published_limit_m = 475.0
    reference_prefixes = ("conv_bn.", "MBConv_ratio_1.", "conv_1x1_bn.")

    def _c(self, channels: int) -> int:
        return make_divisible(channels * self.config.width_mult)

    def plan_layers(self) -> list[LayerSpec]:
        res = conv_out(self.config.input_size, self.config.stem_stride)
        inp, layers = self._c(FIXED), []
        for out, n, first_stride in STAGES:
            for j in range(n):
                stride = first_stride if j == 0 else 1
                layers.append(LayerSpec(len(layers), inp, self._c(out), stride, res))
                res, inp = conv_out(res, stride), self._c(out)
        return layers

    def skip_possible(self, layer: int) -> bool:
        spec = self.layers[layer]
        return spec.stride == 1 and spec.inp == spec.out

    def make_stem(self) -> nn.Module:
        stem, fixed = self._c(STEM), self._c(FIXED)
        return nn.Sequential(OrderedDict(
            first=ConvBNAct(3, stem, 3, self.config.stem_stride, act=nn.ReLU6),
            fixed=InvertedResidual(stem, fixed, 3, 1, 1)))

    def make_op(self, spec: LayerSpec, op: int) -> nn.Module:
        kernel, expansion = OPS[op]
        return InvertedResidual(spec.inp, spec.out, kernel, expansion, spec.stride)

    def make_head(self, dropout: float) -> nn.Module:
        return Head(self.layers[-1].out, self._c(HEAD), self.config.classes, nn.ReLU6,
                    dropout, bias=True)

    def indicator_key(self, op: int) -> str:
        return "project.bn"

    def linear_flops(self, inp: int, out: int) -> int:
        # The reference table counts in multiplies plus (in - 1) adds per output.
        return (2 * inp - 1) * out

    @classmethod
    def reference_key(cls, key: str, layer_of: Sequence[int] | None) -> str | None:
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

    @classmethod
    def reference_is_supernet(cls, keys: Iterable[str]) -> bool:
        return any(k.startswith("features.") and "._ops." in k for k in keys)
