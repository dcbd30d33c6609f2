"""The SPOS ShuffleNetV2 one-shot space (affine BN, so that BN-NAS has gammas to read).

Candidate ops: 0 Shuffle k3, 1 Shuffle k5, 2 Shuffle k7, 3 Xception. No skip.
"""
from __future__ import annotations

import torch
from torch import nn

from . import SPACES
from .base import ConvBNAct, Head, LayerSpec, SearchSpace, conv_out, make_divisible

OPS = (3, 5, 7, "xception")
STAGES = ((64, 4), (160, 4), (320, 8), (640, 4))  # (out channels, layers); first stride 2
STEM, HEAD = 16, 1024


def shuffle_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel shuffle of SPOS: even channels pass through, odd ones feed the branch."""
    return x[:, 0::2], x[:, 1::2]


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 block; `kind` is a depthwise kernel size or "xception"."""

    def __init__(self, inp: int, out: int, stride: int, kind: int | str):
        super().__init__()
        self.stride = stride
        branch_in = inp // 2 if stride == 1 else inp
        branch_out, mid = out - branch_in, out // 2
        if kind == "xception":
            self.main = nn.Sequential(
                ConvBNAct(branch_in, branch_in, 3, stride, groups=branch_in, act=None),
                ConvBNAct(branch_in, mid, 1),
                ConvBNAct(mid, mid, 3, groups=mid, act=None),
                ConvBNAct(mid, mid, 1),
                ConvBNAct(mid, mid, 3, groups=mid, act=None),
                ConvBNAct(mid, branch_out, 1))
            proj_kernel = 3
        else:
            self.main = nn.Sequential(
                ConvBNAct(branch_in, mid, 1),
                ConvBNAct(mid, mid, kind, stride, groups=mid, act=None),
                ConvBNAct(mid, branch_out, 1))
            proj_kernel = kind
        if stride == 2:
            self.proj = nn.Sequential(
                ConvBNAct(inp, inp, proj_kernel, 2, groups=inp, act=None),
                ConvBNAct(inp, inp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            passed, x = shuffle_split(x)
        else:
            passed = self.proj(x)
        return torch.cat((passed, self.main(x)), 1)


@SPACES.register
class ShuffleNetSpace(SearchSpace):
    name = "shufflenet"
    op_names = ("shuffle3", "shuffle5", "shuffle7", "xception")
    default_fixed_skips = ()
    default_dropout = 0.1
    published_arch = "2 1 0 1 2 0 2 0 2 0 2 3 0 0 0 0 3 2 3 3"  # SPOS
    published_limit_m = 330.0  # docs/method.md, "Counting FLOPs and parameters"

    def _c(self, channels: int) -> int:
        return make_divisible(channels * self.config.width_mult)

    def plan_layers(self) -> list[LayerSpec]:
        res = conv_out(self.config.input_size, self.config.stem_stride)
        inp, layers = self._c(STEM), []
        for out, n in STAGES:
            for j in range(n):
                stride = 2 if j == 0 else 1
                layers.append(LayerSpec(len(layers), inp, self._c(out), stride, res))
                res, inp = conv_out(res, stride), self._c(out)
        return layers

    def make_stem(self) -> nn.Module:
        return ConvBNAct(3, self._c(STEM), 3, self.config.stem_stride)

    def make_op(self, spec: LayerSpec, op: int) -> nn.Module:
        return ShuffleUnit(spec.inp, spec.out, spec.stride, OPS[op])

    def make_head(self, dropout: float) -> nn.Module:
        return Head(self.layers[-1].out, self._c(HEAD), self.config.classes, nn.ReLU,
                    dropout, bias=False)

    def indicator_key(self, op: int) -> str:
        return f"main.{5 if OPS[op] == 'xception' else 2}.bn"
