"""A toy search space: the worked example of docs/extending.md, and a test plug-in.

Three searchable layers with two candidate ops each (a 3x3 or a 5x5 conv, then a 1x1
projection whose BN is the BN-NAS indicator). The whole space is this one file: any
stage script takes it with `--plugin`, and `--space toy` then selects it:

    python3 retrain/export.py --plugin docs/examples/toy_space.py --space toy --out /tmp/toy

Everything the rest of the code needs to know about the space is on the class:
its ops, how to build the stem / ops / head, where the indicator BN is, and the facts
the defaults come from (published setting, architecture and FLOPs limit).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from utils.spaces import SPACES, LayerSpec, SearchSpace
from utils.spaces.base import ConvBNAct, Head, conv_out, make_divisible

KERNELS = (3, 5)  # op i: a KERNELS[i] x KERNELS[i] conv
STEM, HEAD = 8, 32
LAYERS = ((16, 2), (16, 1), (16, 1))  # (out channels, stride) of each searchable layer


@SPACES.register
class ToySpace(SearchSpace):
    name = "toy"  # what --space takes
    op_names = tuple(f"conv{k}" for k in KERNELS)
    default_fixed_skips = ()  # layers forced to skip unless --fixed-skips says otherwise
    default_dropout = 0.0
    # The setting the space is "published" at (the default of unset space flags, and
    # where published_limit_m holds): 64x64 ImageNet.
    imagenet = dict(input_size=64, width_mult=1.0, classes=1000, stem_stride=2)
    published_arch = "1 0 1"  # the default architecture of retraining and export
    published_limit_m = 3.7  # the default --flops-limit of a search, in MFLOPs

    def _c(self, channels: int) -> int:
        return make_divisible(channels * self.config.width_mult)

    def plan_layers(self) -> list[LayerSpec]:
        # Each layer's input channels and feature-map size follow from the previous one.
        res = conv_out(self.config.input_size, self.config.stem_stride)
        inp, layers = self._c(STEM), []
        for out, stride in LAYERS:
            layers.append(LayerSpec(len(layers), inp, self._c(out), stride, res))
            inp, res = self._c(out), conv_out(res, stride)
        return layers

    def skip_possible(self, layer: int) -> bool:
        # Only a layer that keeps the shape can be an identity (with --fixed-skips).
        spec = self.layers[layer]
        return spec.stride == 1 and spec.inp == spec.out

    def make_stem(self) -> nn.Module:
        return ConvBNAct(3, self._c(STEM), 3, self.config.stem_stride)

    def make_op(self, spec: LayerSpec, op: int) -> nn.Module:
        return nn.Sequential(OrderedDict(
            conv=ConvBNAct(spec.inp, spec.out, KERNELS[op], spec.stride),
            project=ConvBNAct(spec.out, spec.out, 1, act=None)))

    def make_head(self, dropout: float) -> nn.Module:
        return Head(self.layers[-1].out, self._c(HEAD), self.config.classes, nn.ReLU,
                    dropout, bias=True)

    def indicator_key(self, op: int) -> str:
        return "project.bn"  # the last BN of every op: its |gamma| scores the op
