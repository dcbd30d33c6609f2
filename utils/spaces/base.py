"""What every search space shares: its config, the layer plan, the architecture codec,
and the generic supernet / subnet containers.

A space subclass only says how to build its stem, its candidate ops and its head, and
states its facts as class attributes (published architecture, limit and setting);
parsing, validation, sampling, the supernet forward and weight inheritance live here.
Matrices over a space's choices (FLOPs tables, indicator scores, allowed masks) are
layers x (ops + 1) with the skip in the last column: `op_columns` / `column_ops` map.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from utils.errors import ArchError, ConfigError  # noqa: F401 (re-exported)

SKIP = -1  # the op index of "skip this layer" (identity); the only definition
DEFAULT_SPACE = "mobilenet"  # the published BN-NAS space: the default of --space and configs

# The setting the papers publish their spaces at: `SearchSpace.imagenet`'s default (code
# for any space reads its class's `imagenet`; a space published elsewhere overrides it).
IMAGENET = dict(input_size=224, width_mult=1.0, classes=1000, stem_stride=2)


def op_columns(archs, n_cols: int) -> np.ndarray:
    """Column indices of architectures' ops in a layers x (ops + 1) matrix whose last
    column is the skip: op i -> column i, SKIP -> column n_cols - 1 (same shape)."""
    a = np.asarray(archs, dtype=np.int64)
    return np.where(a == SKIP, n_cols - 1, a)


def column_ops(cols, n_cols: int) -> np.ndarray:
    """The inverse of `op_columns`: column n_cols - 1 -> SKIP, any other column -> its op."""
    c = np.asarray(cols, dtype=np.int64)
    return np.where(c == n_cols - 1, SKIP, c)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90% of the value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out(size: int, stride: int) -> int:
    # Every conv here pads k // 2 with an odd kernel, so only the stride shrinks maps.
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class SpaceConfig:
    """Everything that changes the network's shapes: two equal configs build equal nets."""

    space: str = DEFAULT_SPACE
    input_size: int = 224
    width_mult: float = 1.0
    classes: int = 1000
    fixed_skips: tuple[int, ...] = ()
    stem_stride: int = 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fixed_skips"] = list(self.fixed_skips)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SpaceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown space config keys: {sorted(unknown)}")
        d = dict(d)
        if "fixed_skips" in d:
            d["fixed_skips"] = tuple(int(i) for i in d["fixed_skips"])
        return cls(**d)

    def describe(self) -> str:
        skips = ",".join(map(str, self.fixed_skips)) or "none"
        return (f"{self.space} input={self.input_size} width={self.width_mult:g} "
                f"classes={self.classes} stem_stride={self.stem_stride} fixed_skips={skips}")

    def diff(self, other: "SpaceConfig") -> list[str]:
        """Human-readable list of the fields where two configs differ."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: channels in/out, stride, and the input feature-map size."""

    index: int
    inp: int
    out: int
    stride: int
    resolution: int


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> optional activation; children named conv, bn, act."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.add_module("conv", nn.Conv2d(inp, out, kernel, stride, kernel // 2,
                                          groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out))
        if act is not None:
            self.add_module("act", act(inplace=True))


def init_supernet_weights(module: nn.Module) -> None:
    """The original supernet's init: every conv N(0, sqrt(2 / (k*k*out))), every BN gamma 1
    and beta 0. The classifier keeps PyTorch's default (uniform +-1/sqrt(in) weight and
    bias), as in the original: in BN-only training it stays frozen there, so it sets the
    scale the indicator BNs learn under (docs/method.md, "Initialisation")."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ChoiceLayer(nn.Module):
    """All candidate ops of one searchable layer."""

    def __init__(self, ops: Iterable[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)


class Head(nn.Module):
    """conv1x1-BN-act, global average pool, dropout, linear classifier."""

    def __init__(self, inp: int, hidden: int, classes: int, act: type[nn.Module],
                 dropout: float, bias: bool):
        super().__init__()
        self.conv = ConvBNAct(inp, hidden, 1, act=act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(hidden, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean((2, 3))
        return self.classifier(self.dropout(x))


class Supernet(nn.Module):
    """Every candidate op of every layer; `forward(x, arch)` runs one path."""

    def __init__(self, space: "SearchSpace", dropout: float = 0.0):
        super().__init__()
        self.config = space.config
        self.stem = space.make_stem()
        self.layers = nn.ModuleList(
            ChoiceLayer(space.make_op(spec, op) for op in range(space.num_ops))
            for spec in space.layers)
        self.head = space.make_head(dropout)
        init_supernet_weights(self)

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        x = self.stem(x)
        for layer, op in zip(self.layers, arch):
            if op != SKIP:
                x = layer.ops[op](x)
        return self.head(x)


class Subnet(nn.Module):
    """A standalone network for one architecture; skipped layers are nn.Identity.

    Built from scratch it keeps PyTorch's default init everywhere (as the original's
    retrained network); `SearchSpace.subnet(..., supernet=...)` loads a path instead."""

    def __init__(self, space: "SearchSpace", arch: Sequence[int], dropout: float = 0.0):
        super().__init__()
        arch = space.validate(arch)
        self.config = space.config
        self.arch = tuple(arch)
        self.stem = space.make_stem()
        self.layers = nn.ModuleList(
            nn.Identity() if op == SKIP else space.make_op(spec, op)
            for spec, op in zip(space.layers, arch))
        self.head = space.make_head(dropout)
        # No custom init: the original retrains from PyTorch's default init of every layer.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def path_state_dict(supernet_state: dict, arch: Sequence[int]) -> dict:
    """The subnet's state_dict taken from a supernet's: `layers.i.ops.op.` -> `layers.i.`."""
    out = {}
    pattern = re.compile(r"^layers\.(\d+)\.ops\.(\d+)\.(.*)$")
    for key, value in supernet_state.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) == arch[int(m.group(1))]:
            out[f"layers.{m.group(1)}.{m.group(3)}"] = value
    return out


class SearchSpace:
    """A layer plan plus op builders. Subclasses set the class attributes and builders.

    Every fact about a space lives on its class, so that a new space is one file with
    one `@SPACES.register` class (docs/examples/toy_space.py): the code that needs a
    published architecture, limit or setting reads `SPACES.get(name).<attribute>`.
    """

    name: str = ""
    op_names: tuple[str, ...] = ()
    default_fixed_skips: tuple[int, ...] = ()
    default_dropout: float = 0.0  # dropout before the classifier when retraining
    # The setting the space is published at (SpaceConfig fields but space, fixed_skips):
    # the default of unset space flags, and where `published_limit_m` holds.
    imagenet: dict = IMAGENET
    # The architecture its paper reports ("3 -1 0 ..."): retraining's and the hub's
    # default. None: there is none, an architecture must be given.
    published_arch: str | None = None
    # The FLOPs limit (millions) its paper searched under at `imagenet`; other configs
    # get the limit at the same relative place in their FLOPs range (utils/flops/limits.py).
    # None: no published limit, the default is a fixed place in the range.
    published_limit_m: float | None = None
    # Key prefixes that mark the original release's checkpoints of this space (empty:
    # it has none); `reference_key` translates their key names (utils/checkpoints/original.py).
    reference_prefixes: tuple[str, ...] = ()

    def __init__(self, config: SpaceConfig):
        if config.space != self.name:
            raise ConfigError(f"config is for space '{config.space}', not '{self.name}'")
        if config.input_size < 8:
            raise ConfigError(f"input size {config.input_size} is too small (minimum 8)")
        if not (math.isfinite(config.width_mult) and config.width_mult > 0):
            raise ConfigError(f"width multiplier must be a positive finite number, got "
                              f"{config.width_mult}")
        if config.classes < 2:
            raise ConfigError(f"need at least 2 classes, got {config.classes}")
        if config.stem_stride not in (1, 2):
            raise ConfigError(f"stem stride must be 1 or 2, got {config.stem_stride}")
        self.config = config
        self.layers: list[LayerSpec] = self.plan_layers()
        n = len(self.layers)
        for i in config.fixed_skips:
            if not 0 <= i < n:
                raise ConfigError(f"fixed skip layer {i} is outside 0..{n - 1}")
            if not self.skip_possible(i):
                raise ConfigError(f"layer {i} cannot be skipped (it changes stride or width)")

    # ---- to be provided by a space -------------------------------------------------
    def plan_layers(self) -> list[LayerSpec]:
        raise NotImplementedError

    def make_stem(self) -> nn.Module:
        raise NotImplementedError

    def make_op(self, spec: LayerSpec, op: int) -> nn.Module:
        raise NotImplementedError

    def make_head(self, dropout: float) -> nn.Module:
        raise NotImplementedError

    def skip_possible(self, layer: int) -> bool:
        return False

    def linear_flops(self, inp: int, out: int) -> int:
        """Multiply-accumulates counted for the classifier (conventions differ by paper)."""
        return inp * out

    def indicator_key(self, op: int) -> str:
        """Path, inside candidate op `op`, of the BN whose |gamma| scores it."""
        raise NotImplementedError

    @classmethod
    def reference_key(cls, key: str, layer_of: Sequence[int] | None) -> str | None:
        """This project's name for key `key` of an original-release checkpoint (None: not
        one of its keys). `layer_of[j]` is the layer of a retrained subnet's j-th non-skip
        layer; None for a supernet. Only spaces with `reference_prefixes` provide it."""
        return None

    @classmethod
    def reference_is_supernet(cls, keys: Iterable[str]) -> bool:
        """Whether original-release keys `keys` are a supernet's (else a retrained subnet)."""
        return False

    # ---- shared ---------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_ops(self) -> int:
        return len(self.op_names)

    def allowed(self, layer: int) -> tuple[int, ...]:
        """Op indices a layer may take; a forced-skip layer allows only -1."""
        if layer in self.config.fixed_skips:
            return (SKIP,)
        ops = tuple(range(self.num_ops))
        return ops + (SKIP,) if self.skip_possible(layer) and self.allow_free_skip else ops

    # Free skips (search over depth) are off by default, as in the reference: depth is set
    # by fixed_skips. A space may turn it on for experiments.
    allow_free_skip: bool = False

    def allowed_text(self, layer: int) -> str:
        ops = self.allowed(layer)
        if ops == (SKIP,):
            return "-1 (forced skip)"
        return " ".join(map(str, ops))

    def parse(self, text: str | Sequence[int]) -> tuple[int, ...]:
        """Parse "3 -1 0 4 ...", "3,-1,0", "[3, -1, 0]" or a list, then validate."""
        if isinstance(text, str):
            tokens = [t for t in re.split(r"[\s,\[\]()]+", text.strip()) if t]
            try:
                arch = [int(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
                raise ArchError(f"architecture token '{bad}' is not an integer") from None
        else:
            arch = [int(a) for a in text]
        return self.validate(arch)

    def validate(self, arch: Sequence[int]) -> tuple[int, ...]:
        arch = tuple(int(a) for a in arch)
        n = self.num_layers
        if len(arch) != n:
            raise ArchError(f"{self.name} architecture needs {n} layer choices, got {len(arch)}")
        for i, op in enumerate(arch):
            allowed = self.allowed(i)
            if op in allowed:
                continue
            if op == SKIP:
                why = "cannot be skipped"
            elif i in self.config.fixed_skips:
                why = f"is a forced skip and must be -1, got {op}"
            elif not 0 <= op < self.num_ops:
                why = f"op {op} is out of range"
            else:
                why = f"op {op} is not allowed"
            raise ArchError(f"layer {i} {why} (allowed: {self.allowed_text(i)})")
        return arch

    def format(self, arch: Sequence[int]) -> str:
        return " ".join(str(int(a)) for a in arch)

    def random_arch(self, rng: np.random.Generator) -> tuple[int, ...]:
        return tuple(int(rng.choice(self.allowed(i))) for i in range(self.num_layers))

    def allowed_mask(self) -> np.ndarray:
        """Bool matrix layers x (num_ops + 1); the last column is the skip (-1) choice."""
        mask = np.zeros((self.num_layers, self.num_ops + 1), dtype=bool)
        for i in range(self.num_layers):
            mask[i, self.op_columns(self.allowed(i))] = True
        return mask

    def op_columns(self, archs) -> np.ndarray:
        """Columns of `archs`' ops in a layers x (num_ops + 1) matrix (skip: the last)."""
        return op_columns(archs, self.num_ops + 1)

    def column_ops(self, cols) -> np.ndarray:
        """Ops of matrix columns `cols` (the last column: SKIP)."""
        return column_ops(cols, self.num_ops + 1)

    # ---- builders -------------------------------------------------------------------
    def supernet(self, dropout: float = 0.0) -> Supernet:
        return Supernet(self, dropout)

    def subnet(self, arch: Sequence[int], dropout: float | None = None,
               supernet: Supernet | dict | None = None) -> Subnet:
        """Build a subnet; with `supernet` (module or state_dict) it inherits the path."""
        net = Subnet(self, arch, self.default_dropout if dropout is None else dropout)
        if supernet is not None:
            state = supernet.state_dict() if isinstance(supernet, nn.Module) else supernet
            net.load_state_dict(path_state_dict(state, net.arch))
        return net

    def indicator_modules(self, supernet: Supernet) -> list[list[nn.BatchNorm2d]]:
        return [[layer.ops[op].get_submodule(self.indicator_key(op))
                 for op in range(self.num_ops)] for layer in supernet.layers]

    def indicator_param_names(self) -> list[list[str]]:
        """state_dict key prefixes of every indicator BN, layers x ops."""
        return [[f"layers.{i}.ops.{op}.{self.indicator_key(op)}" for op in range(self.num_ops)]
                for i in range(self.num_layers)]
