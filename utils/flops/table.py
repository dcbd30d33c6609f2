"""FLOPs (multiply-accumulates) and parameter lookup tables (the CLI is tools/flops.py).

A table is built once per space config by profiling every candidate op at its input
resolution (on the meta device: shapes only, no arithmetic), saved as JSON, and an
architecture's cost is then the sum of its entries. `FlopsTable.flops_of(archs)` scores
a whole batch of architectures with one numpy gather.

    python3 tools/flops.py --space mobilenet --arch "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.logs import get_logger
from utils.spaces import SearchSpace, SpaceConfig, get_space, op_columns
from utils.spaces.base import conv_out

TABLE_VERSION = 1

_log = get_logger(__name__)


def committed_dir() -> str:
    """Tables shipped with the repo (ImageNet settings, from get_flops_lookup_table.sh)."""
    from utils.cli.common import REPO_ROOT
    return os.path.join(REPO_ROOT, "data", "flops_tables")


def table_dir() -> str:
    """Where tables built on demand are cached (outside the checkout by default)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "bnnas", "flops_tables")
    return os.environ.get("BNNAS_TABLE_DIR", default)


def count(module: nn.Module, input_shape: Sequence[int], linear_flops) -> tuple[int, int]:
    """(MACs, params) of one forward at `input_shape` (batch 1).

    Convs count out_elements * in/groups * k*k; linears use `linear_flops(in, out)`;
    BN, activations, pooling and residual adds are free, as in the papers' tables.
    """
    macs = 0

    def on_conv(m: nn.Conv2d, _inp, out):
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out.numel() * (m.in_channels // m.groups) * kh * kw

    def on_linear(m: nn.Linear, _inp, out):
        nonlocal macs
        macs += (out.numel() // m.out_features) * linear_flops(m.in_features, m.out_features)

    hooks = [m.register_forward_hook(on_conv if isinstance(m, nn.Conv2d) else on_linear)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.empty(*input_shape, device=next(module.parameters()).device))
        module.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in module.parameters())
    return int(macs), int(params)


def _table_key(config: SpaceConfig) -> dict:
    # Forced skips do not change any entry, so one table serves every depth setting.
    d = config.to_dict()
    d.pop("fixed_skips")
    return d


class FlopsTable:
    """Per-layer, per-op costs. Column -1 (the last) is the skip, which costs nothing."""

    def __init__(self, key: dict, base_flops: int, base_params: int,
                 flops: np.ndarray, params: np.ndarray, entries: list[dict] | None = None):
        self.key = key
        self.base_flops, self.base_params = int(base_flops), int(base_params)
        self.flops = np.asarray(flops, dtype=np.int64)
        self.params = np.asarray(params, dtype=np.int64)
        self.entries = entries or []

    # ---- building ------------------------------------------------------------------
    @classmethod
    def build(cls, space: SearchSpace) -> "FlopsTable":
        cfg = space.config
        lf = space.linear_flops
        n_ops = space.num_ops
        flops = np.zeros((space.num_layers, n_ops + 1), dtype=np.int64)
        params = np.zeros_like(flops)
        entries = []
        with torch.device("meta"):
            stem_f, stem_p = count(space.make_stem(), (1, 3, cfg.input_size, cfg.input_size), lf)
            last = space.layers[-1]
            res = conv_out(last.resolution, last.stride)
            head_f, head_p = count(space.make_head(0.0), (1, last.out, res, res), lf)
            for spec in space.layers:
                for op in range(n_ops):
                    shape = (1, spec.inp, spec.resolution, spec.resolution)
                    flops[spec.index, op], params[spec.index, op] = count(
                        space.make_op(spec, op), shape, lf)
                entries.append(dict(inp=spec.inp, out=spec.out, h=spec.resolution,
                                    w=spec.resolution, stride=spec.stride))
        return cls(_table_key(cfg), stem_f + head_f, stem_p + head_p, flops, params, entries)

    def to_json(self) -> dict:
        d = dict(version=TABLE_VERSION, key=self.key, base_flops=self.base_flops,
                 base_params=self.base_params, layers=[
                     dict(**e, flops=self.flops[i, :-1].tolist(),
                          params=self.params[i, :-1].tolist())
                     for i, e in enumerate(self.entries)])
        d["sha256"] = _checksum(d)  # checked on load: an edited entry is caught
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FlopsTable":
        layers = d["layers"]
        flops = np.array([l["flops"] + [0] for l in layers], dtype=np.int64)
        params = np.array([l["params"] + [0] for l in layers], dtype=np.int64)
        entries = [{k: l[k] for k in ("inp", "out", "h", "w", "stride")} for l in layers]
        return cls(d["key"], d["base_flops"], d["base_params"], flops, params, entries)

    def save(self, path: str) -> None:
        from utils.files import write_json_atomic
        write_json_atomic(self.to_json(), path)

    # ---- querying ------------------------------------------------------------------
    def _gather(self, table: np.ndarray, archs) -> np.ndarray:
        a = np.asarray(archs, dtype=np.int64)
        single = a.ndim == 1
        a = np.atleast_2d(a)
        out = table[np.arange(a.shape[1]), op_columns(a, table.shape[1])].sum(axis=1)
        return out[0] if single else out

    def flops_of(self, archs) -> np.ndarray | int:
        """MACs of one architecture (int) or of a [N, layers] batch (int64 array)."""
        out = self.base_flops + self._gather(self.flops, archs)
        return int(out) if np.ndim(out) == 0 else out

    def params_of(self, archs) -> np.ndarray | int:
        out = self.base_params + self._gather(self.params, archs)
        return int(out) if np.ndim(out) == 0 else out


def table_path(config: SpaceConfig, directory: str | None = None) -> str:
    k = _table_key(config)
    name = (f"{k['space']}_in{k['input_size']}_w{k['width_mult']:g}_c{k['classes']}"
            f"_s{k['stem_stride']}.json")
    return os.path.join(directory or table_dir(), name)


class TableError(ValueError):
    """A table file that does not fit its config (the reason, one line)."""


def _checksum(d: dict) -> str:
    body = {k: d.get(k) for k in ("version", "key", "base_flops", "base_params", "layers")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _count_ok(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_table(d, config: SpaceConfig, space: SearchSpace | None = None,
                layer: int | None = None) -> FlopsTable:
    """The table of JSON object `d`, after checking it against `config`'s space.

    Checked: version and config key; layers x ops shape (the skip column is implicit);
    every entry, base FLOPs and params a non-negative integer; each layer's recorded
    shapes (in/out channels, resolution, stride) equal to the space's; the stored
    checksum (tables written by this version); and, as a cheap plausibility test, one
    layer's entries recomputed (`layer`, default a random one). Raises TableError.
    """
    if not isinstance(d, dict):
        raise TableError("not a JSON object")
    if d.get("version") != TABLE_VERSION:
        raise TableError(f"table version {d.get('version')!r}, expected {TABLE_VERSION}")
    if d.get("key") != _table_key(config):
        raise TableError(f"it is the table of another config ({d.get('key')})")
    space = space or get_space(config)
    for name in ("base_flops", "base_params"):
        if not _count_ok(d.get(name)):
            raise TableError(f"{name} is {d.get(name)!r}, not a non-negative integer")
    layers = d.get("layers")
    if not isinstance(layers, list) or len(layers) != space.num_layers:
        n = len(layers) if isinstance(layers, list) else "no"
        raise TableError(f"{n} layers, the space has {space.num_layers}")
    for i, (row, spec) in enumerate(zip(layers, space.layers)):
        if not isinstance(row, dict):
            raise TableError(f"layer {i} is not an object")
        for name in ("flops", "params"):
            v = row.get(name)
            if not isinstance(v, list) or len(v) != space.num_ops:
                raise TableError(f"layer {i} has {len(v) if isinstance(v, list) else 'no'} "
                                 f"{name} entries, the space has {space.num_ops} ops (+ skip)")
            bad = next((x for x in v if not _count_ok(x)), None)
            if bad is not None or any(not _count_ok(x) for x in v):
                raise TableError(f"layer {i} {name} entry {bad!r} is not a non-negative integer")
        want = dict(inp=spec.inp, out=spec.out, h=spec.resolution, w=spec.resolution,
                    stride=spec.stride)
        got = {k: row.get(k) for k in want}
        if got != want:
            raise TableError(f"layer {i} records shapes {got}, the space has {want}")
    if "sha256" in d and d["sha256"] != _checksum(d):
        raise TableError("its checksum does not match its entries (edited or damaged)")
    table = FlopsTable.from_json(d)
    # A private generator, and the global torch RNG kept as it was (op construction
    # initialises weights): checking a table never changes a seeded run's random numbers.
    i = random.Random().randrange(space.num_layers) if layer is None else layer
    spec = space.layers[i]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for op in range(space.num_ops):
            f, p = count(space.make_op(spec, op), (1, spec.inp, spec.resolution, spec.resolution),
                         space.linear_flops)
            if (f, p) != (int(table.flops[i, op]), int(table.params[i, op])):
                raise TableError(f"layer {i} op {op} records {int(table.flops[i, op])} FLOPs, "
                                 f"{int(table.params[i, op])} params; recomputed: {f}, {p}")
    return table


_CHECKED: dict[tuple, FlopsTable] = {}


def _read(path: str, config: SpaceConfig) -> FlopsTable | None:
    """The checked table at `path`; None when there is none; TableError when it is wrong."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    memo = (os.path.abspath(path), st.st_mtime_ns, st.st_size, json.dumps(_table_key(config)))
    if memo in _CHECKED:
        return _CHECKED[memo]
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise TableError(f"unreadable ({e.strerror or e})") from None
    except ValueError as e:
        raise TableError(f"not valid JSON ({e})") from None
    table = check_table(d, config)
    _CHECKED[memo] = table
    return table


def load_table(config: SpaceConfig, directory: str | None = None, rebuild: bool = False) -> FlopsTable:
    """Load the table of `config`, building (and saving) it when absent.

    Without `directory`, a table shipped in data/flops_tables wins, then the user cache
    ($BNNAS_TABLE_DIR or ~/.cache/bnnas/flops_tables). Every table read is checked
    (`check_table`): a cached one that does not fit is rebuilt with a one-line note; a
    shipped one, or one in the `directory` given, is refused in one line (UserError).
    """
    from utils.cli.common import UserError
    places = [(directory, "given")] if directory else [(committed_dir(), "shipped"),
                                                       (table_dir(), "cache")]
    if not rebuild:
        for place, role in places:
            path = table_path(config, place)
            try:
                table = _read(path, config)
            except TableError as e:
                if role == "cache":
                    _log.warning(f"note: rebuilding the FLOPs table {path}: {e}",
                                 extra={"all_ranks": True})
                    break
                fix = ("restore it (git checkout data/flops_tables or "
                       "utils/flops/get_flops_lookup_table.sh)" if role == "shipped" else
                       f"rebuild it with tools/flops.py --build --table-dir {directory} "
                       f"(and the same space flags), or remove it")
                raise UserError(f"FLOPs table {path} is not the table of {config.describe()}: "
                                f"{e}; {fix}") from None
            if table is not None:
                return table
    table = FlopsTable.build(get_space(config))
    try:
        table.save(table_path(config, directory or table_dir()))
    except (OSError, UserError):
        pass  # a read-only home still works; the table is just rebuilt next time
    return table
