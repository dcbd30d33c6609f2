"""Scorers: what the search ranks architectures by, one registered class per name.

    scorer = SCORERS.get("indicator")()          # ea.py --score indicator (the default)
    scorer.prepare(ScoreContext.from_checkpoint("checkpoint.pth.tar", args))
    scorer.score(archs)       # [N] float64: the scorer's own values (FLOPs for "flops")
    scorer.objective(archs)   # [N]: what the search maximises and logs as "score"
    scorer.matrix()           # additive scorers: layers x (ops + 1), skip column last

Built-ins: `indicator` (BN-NAS: mean |gamma| of each op's last BN, additive), `accuracy`
(SPOS: BN recalibration + top-1 on a fixed held-out subset, utils.search.spos), `flops`
and `params` (the lookup table, additive; lower is better, so the search maximises and
logs minus the count), and the zero-cost proxies of utils.search.zero_cost (`synflow`,
`naswot`, `grad_norm`, `snip`: each candidate's standalone subnet at a seeded
initialisation, on one fixed batch of training images).

Every search log holds "higher is better" scores: a scorer with higher_is_better=False
is negated (`objective`). An additive scorer's score is offset() plus one matrix entry per
layer, so the exact search (utils.search.exact) can solve it; the others run the EA only.
A log records the scorer's name (`score_kind`); `scorer_class(name)` gives its texts back
(this base class for a name not registered here: a reference log's "unknown", a plug-in
not loaded). A plug-in file registers its own subclass (docs/examples/toy_scorer.py).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from utils.errors import UserError
from utils.logs import get_logger
from utils.registry import Registry
from utils.search import indicator as bn_indicator

log = get_logger(__name__)

SCORERS = Registry("scorer")
DEFAULT_SCORER = "indicator"


@dataclass
class ScoreContext:
    """What a scorer may need: the space and its FLOPs table, the supernet (weights and
    checkpoint metadata), the search's settings (data folders, device, batch sizes: the
    parsed flags of search/ea.py) and the BN indicator matrix when already computed.
    `input_format` and `dataset` resolve a flag against what the supernet records."""
    space: Any
    table: Any
    state_dict: Mapping[str, torch.Tensor] | None = None
    checkpoint: Any = None  # utils.checkpoints.supernet.SupernetCheckpoint
    checkpoint_path: str = "the supernet"
    args: argparse.Namespace = field(default_factory=argparse.Namespace)
    indicator: np.ndarray | None = None

    @classmethod
    def from_checkpoint(cls, path: str, args: argparse.Namespace | None = None
                        ) -> "ScoreContext":
        from utils.checkpoints.supernet import load_supernet
        from utils.flops.table import load_table
        from utils.spaces import get_space
        ck = load_supernet(path)
        return cls(space=get_space(ck.config), table=load_table(ck.config),
                   state_dict=ck.state_dict, checkpoint=ck, checkpoint_path=path,
                   args=args if args is not None else argparse.Namespace())

    @property
    def input_format(self) -> str:
        """--input-format, else the supernet's own, else rgb."""
        ck_format = getattr(self.checkpoint, "input_format", None)
        return getattr(self.args, "input_format", None) or ck_format or "rgb"

    @property
    def dataset(self) -> str | None:
        """--dataset, else the one the supernet was trained on (its checkpoint's args),
        else None (imagefolder). A recorded name not registered here (a plug-in not
        loaded) is a one-line UserError."""
        given = getattr(self.args, "dataset", None)
        if given:
            return given
        recorded = getattr(self.checkpoint, "dataset", None)
        if recorded is None:
            return None
        from utils.data.datasets import recorded_dataset
        return recorded_dataset(dict(dataset=recorded), f"supernet {self.checkpoint_path}")

    @property
    def seed(self) -> int:
        return int(getattr(self.args, "seed", 0) or 0)

    def bn_indicator(self) -> np.ndarray:
        if self.indicator is None:
            self.indicator = bn_indicator.indicator_matrix(self.space, self.state_dict)
        return self.indicator


def fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """Short hash of tensors' bytes: the log's identity of what the scores depend on."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Scorer:
    """Base class. Subclasses set `name` and override `score` (or, when additive,
    `prepare` + `matrix` and maybe `offset`); the other hooks have working defaults."""
    name: str = ""
    label: str = "score"          # short text: eval.py's header, progress lines
    axis_label: str = "score"     # plot axes
    description: str = "score, higher is better"  # ea.py's top-k header
    help: str = ""                # --score's help
    additive: bool = False        # score = offset() + one matrix() entry per layer
    higher_is_better: bool = True
    bn_diagnostics: bool = False  # the BN indicator's per-layer spread judges its picks
    timing_name: str | None = None  # "<it> scoring: ..." in ea.py's report (default: label)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of this scorer for search/ea.py (none by default)."""

    def __init__(self) -> None:
        self.context: ScoreContext | None = None

    # ---- checks, before the search starts ------------------------------------------
    def validate_checkpoint(self, ck, path: str) -> None:
        """Refuse (UserError) weights this scorer cannot use; runs right after loading."""

    def check_supernet(self, ck, path: str) -> None:
        """Refuse or warn about how the supernet was trained (ck.train_all)."""

    def signature(self, ctx: ScoreContext) -> dict:
        """What the scores depend on, for the log's identity (a resume must match it)."""
        sd = ctx.state_dict or {}
        return dict(supernet=fingerprint(sd[k] for k in sorted(sd)))

    # ---- scoring ---------------------------------------------------------------------
    def prepare(self, ctx: ScoreContext) -> None:
        """Read what scoring needs (weights, data...); called before the first score."""
        self.context = ctx

    def score(self, archs) -> np.ndarray:
        """[N] float64 scores of a [N, layers] batch (an additive scorer: from matrix())."""
        if not self.additive:
            raise NotImplementedError(f"scorer '{self.name}' defines no score()")
        a = np.atleast_2d(np.asarray(archs, dtype=np.int64))
        m = self.matrix()
        return self.offset() + m[np.arange(a.shape[1]), a].sum(axis=1)

    def matrix(self) -> np.ndarray:
        """Additive scorers: float64 [layers, ops + 1], the last column the skip."""
        raise UserError(f"--score {self.name} is not a sum over layers (no score matrix)")

    def offset(self) -> float:
        """Additive scorers: the part of every score that no layer's choice changes."""
        return 0.0

    def objective(self, archs) -> np.ndarray:
        """What the search maximises: score, negated when lower is better."""
        s = np.asarray(self.score(archs), dtype=np.float64)
        return s if self.higher_is_better else -s

    def objective_matrix(self) -> np.ndarray:
        m = np.asarray(self.matrix(), dtype=np.float64)
        return m if self.higher_is_better else -m

    # ---- texts and log keys ------------------------------------------------------------
    @property
    def timing_key(self) -> str:
        """A non-additive scorer's timing in the log: <key>_seconds_per_candidate and
        <key>_1000_seconds (accuracy_...: the keys of SPOS logs)."""
        return self.name

    def reference_keys(self, value: float) -> dict:
        """The reference's keys of a vis_dict entry, from the logged (objective) value:
        `err`, lower is better."""
        return dict(err=-float(value))

    def format_value(self, value: float) -> str:
        """One candidate's objective value in a progress line."""
        return f"{self.name} {value:.4g}"


def scorer_class(name: str | None) -> type[Scorer]:
    """The registered class of a log's score_kind; the base class for any other name."""
    return SCORERS.get(name) if isinstance(name, str) and name in SCORERS else Scorer


def get_scorer(name: str) -> Scorer:
    return SCORERS.get(name)()


def additive_names() -> list[str]:
    return [n for n, cls in SCORERS.items() if cls.additive]


def check_method(name: str, method: str) -> None:
    """The exact search needs an additive scorer: one line otherwise."""
    if method == "exact" and not SCORERS.get(name).additive:
        raise UserError(f"--method exact needs a score that is a sum over layers "
                        f"({', '.join(additive_names())}); use --method ea with "
                        f"--score {name}")


# ---- built-ins ----------------------------------------------------------------------------

@SCORERS.register
class IndicatorScorer(Scorer):
    name = "indicator"
    label = "BN indicator"
    axis_label = "BN indicator (sum of mean |gamma|)"
    description = "BN indicator, higher is better"
    help = "BN indicator (BN-NAS)"
    additive = True
    bn_diagnostics = True

    def check_supernet(self, ck, path: str) -> None:
        if ck.train_all:
            log.info(f"warning: {path} was trained with --train-all (SPOS); the BN "
                     f"indicator is defined for BN-only supernets (BN-NAS), so its ranking "
                     f"may be poor (consider --score accuracy)")

    def signature(self, ctx: ScoreContext) -> dict:
        return dict(supernet=fingerprint([torch.from_numpy(ctx.bn_indicator())]))

    def prepare(self, ctx: ScoreContext) -> None:
        super().prepare(ctx)
        self._matrix = ctx.bn_indicator()

    def matrix(self) -> np.ndarray:
        return self._matrix

    def score(self, archs) -> np.ndarray:
        return bn_indicator.score(self._matrix, np.atleast_2d(np.asarray(archs)))


@SCORERS.register
class AccuracyScorer(Scorer):
    name = "accuracy"
    label = "top-1 %"
    axis_label = "SPOS top-1 on the validation subset (%)"
    description = "top-1 % on the fixed validation subset"
    help = "SPOS accuracy (needs a --train-all supernet)"
    timing_name = "SPOS accuracy"

    def validate_checkpoint(self, ck, path: str) -> None:
        from utils.train.stop import first_nonfinite
        bad = first_nonfinite(ck.state_dict.items())
        if bad is not None:
            raise UserError(f"{path}: weight '{bad}' is nan or inf: the supernet's training "
                            f"diverged; retrain it")

    def check_supernet(self, ck, path: str) -> None:
        if ck.train_all is False:
            raise UserError(
                f"--score accuracy needs a supernet trained with --train-all (SPOS); "
                f"{path} trained only BN parameters, so its convolutions are random and "
                f"accuracies would be meaningless (use --score indicator)")
        if ck.train_all is None:
            log.info("warning: cannot tell whether this reference supernet was trained with "
                     "all weights; SPOS accuracy scoring is only meaningful if it was")

    def signature(self, ctx: ScoreContext) -> dict:
        a, ck = ctx.args, ctx.checkpoint
        sig = super().signature(ctx)
        sig.update(bn_batches=a.bn_batches, batch_size=a.batch_size, val_images=a.val_images,
                   train_dir=os.path.abspath(a.train_dir), test_dir=os.path.abspath(a.test_dir),
                   input_format=ctx.input_format)
        if getattr(ck, "resize_mode", None) not in (None, "antialias"):  # older logs: default
            sig["resize_mode"] = ck.resize_mode
        _add_dataset(sig, ctx.dataset)
        return sig

    def prepare(self, ctx: ScoreContext) -> None:
        if self.context is ctx:
            return  # the data are decoded once
        super().prepare(ctx)
        from utils.search.spos import SposScorer
        a, ck = ctx.args, ctx.checkpoint
        self._spos = SposScorer(ctx.space, ctx.state_dict, a.train_dir, a.test_dir,
                                bn_batches=a.bn_batches, batch_size=a.batch_size,
                                val_images=a.val_images, device=a.device, seed=a.seed,
                                workers=a.workers, input_format=ctx.input_format,
                                log=log.info, class_names=getattr(ck, "classes", None),
                                resize_mode=getattr(ck, "resize_mode", None),
                                source=f"supernet {ctx.checkpoint_path}",
                                dataset=ctx.dataset)

    def score(self, archs) -> np.ndarray:
        return self._spos(archs)

    def reference_keys(self, value: float) -> dict:
        return dict(err=100.0 - float(value), acc=float(value))  # as the SPOS reference

    def format_value(self, value: float) -> str:
        return f"top-1 {value:.2f}%"


def _add_dataset(sig: dict, dataset: str | None) -> None:
    """A dataset other than the default joins the signature (older logs have none, and
    were scored on imagefolder: they still resume)."""
    if dataset not in (None, "imagefolder"):
        sig["dataset"] = dataset


class _TableScorer(Scorer):
    """A cost from the FLOPs lookup table (utils.flops.table): additive, lower is better."""
    column = "flops"
    additive = True
    higher_is_better = False

    def signature(self, ctx: ScoreContext) -> dict:
        t = ctx.table
        return dict(table=fingerprint([torch.from_numpy(np.asarray(getattr(t, self.column))),
                                       torch.tensor([t.base_flops, t.base_params])]))

    def prepare(self, ctx: ScoreContext) -> None:
        super().prepare(ctx)
        self._matrix = np.asarray(getattr(ctx.table, self.column), dtype=np.float64)
        self._offset = float(getattr(ctx.table, f"base_{self.column}"))

    def matrix(self) -> np.ndarray:
        return self._matrix

    def offset(self) -> float:
        return self._offset

    def score(self, archs) -> np.ndarray:
        of = getattr(self.context.table, f"{self.column}_of")
        return np.asarray(of(np.atleast_2d(np.asarray(archs, dtype=np.int64))),
                          dtype=np.float64)

    def format_value(self, value: float) -> str:
        return f"{self.column} {-value / 1e6:.2f}M"


@SCORERS.register
class FlopsScorer(_TableScorer):
    name = "flops"
    column = "flops"
    label = "minus FLOPs"
    axis_label = "minus FLOPs (multiply-adds; higher is cheaper)"
    description = "minus FLOPs from the lookup table, higher (cheaper) is better"
    help = "FLOPs from the lookup table, fewer is better (logged negated)"


@SCORERS.register
class ParamsScorer(_TableScorer):
    name = "params"
    column = "params"
    label = "minus params"
    axis_label = "minus parameters (higher is smaller)"
    description = "minus parameters from the lookup table, higher (smaller) is better"
    help = "parameters from the lookup table, fewer is better (logged negated)"


PROXY_BATCH = 64  # images in the fixed batch (the ranking study's default)


class ZeroCostScorer(Scorer):
    """A zero-cost proxy (utils.search.zero_cost) of each candidate's standalone subnet at
    the seeded initialisation of --seed, on one fixed batch of --train_dir images."""
    proxy = ""
    help = "zero-cost proxy"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        if "--proxy-batch" in parser._option_string_actions:
            return  # one flag for all the proxies
        from utils.cli.argtypes import positive_int
        g = parser.add_argument_group(
            "zero-cost proxy scoring (--score " + "|".join(
                n for n, c in SCORERS.items() if issubclass(c, ZeroCostScorer)) + ")")
        g.add_argument("--proxy-batch", "--proxy_batch", dest="proxy_batch", type=positive_int,
                       default=PROXY_BATCH,
                       help="training images (from --train_dir) in the proxies' fixed batch")

    def signature(self, ctx: ScoreContext) -> dict:
        a = ctx.args  # the weights play no part: every subnet starts from its init
        sig = dict(proxy=self.proxy, proxy_batch=a.proxy_batch,
                   train_dir=os.path.abspath(a.train_dir), input_format=ctx.input_format)
        _add_dataset(sig, ctx.dataset)
        return sig

    def prepare(self, ctx: ScoreContext) -> None:
        if self.context is ctx:
            return
        super().prepare(ctx)
        from utils.dist import resolve_device
        from utils.search.zero_cost import fixed_batch
        a, ck = ctx.args, ctx.checkpoint
        self.device = resolve_device(getattr(a, "device", "auto"))
        t0 = time.perf_counter()
        self._x, self._y = fixed_batch(a.train_dir, ctx.space.config, a.proxy_batch, ctx.seed,
                                       class_names=getattr(ck, "classes", None),
                                       source=f"supernet {ctx.checkpoint_path}",
                                       input_format=ctx.input_format, device=self.device,
                                       dataset=ctx.dataset)
        log.info(f"{self.proxy} scoring: a fixed batch of {len(self._y)} training images, "
                 f"subnets at the initialisation of seed {ctx.seed}, on {self.device} "
                 f"(decoded in {time.perf_counter() - t0:.1f}s)")

    def score(self, archs) -> np.ndarray:
        from utils.search.zero_cost import PROXIES, init_subnet
        fn, ctx = PROXIES[self.proxy], self.context
        out = []
        for arch in np.atleast_2d(np.asarray(archs, dtype=np.int64)):
            net = init_subnet(ctx.space, arch, ctx.seed).to(self.device)
            out.append(float(fn(net, self._x, self._y)))
        return np.array(out, dtype=np.float64)


def _proxy(proxy: str, text: str) -> type[ZeroCostScorer]:
    cls = type(f"{proxy.title().replace('_', '')}Scorer", (ZeroCostScorer,), dict(
        name=proxy, proxy=proxy, label=text, axis_label=f"{text} (zero-cost proxy)",
        description=f"{text} zero-cost proxy at initialisation, higher is better",
        help=f"{text} zero-cost proxy", __module__=__name__,
        __doc__=f"The {text} zero-cost proxy (utils.search.zero_cost.{proxy})."))
    return SCORERS.register(cls)


for _name, _text in (("synflow", "synflow"), ("naswot", "NASWOT"),
                     ("grad_norm", "grad-norm"), ("snip", "SNIP")):
    _proxy(_name, _text)


__all__ = ["SCORERS", "DEFAULT_SCORER", "Scorer", "ScoreContext", "scorer_class",
           "get_scorer", "additive_names", "check_method", "fingerprint", "ZeroCostScorer"]
