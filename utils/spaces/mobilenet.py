"""The MobileNetV2-like space of ABS/AngleNAS ("GPU" setting), used by the BN-NAS results.

Candidate ops: 0 k3e3, 1 k3e6, 2 k5e3, 3 k5e6, 4 k7e3, 5 k7e6; -1 is identity.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

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


class MobileNetSpace(SearchSpace):
    name = "mobilenet"
    op_names = tuple(f"k{k}e{e}" for k, e in OPS)
    default_fixed_skips = (1, 5, 6, 9)
    default_dropout = 0.2

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
