"""What `search/ea.py` does: load a supernet, run the EA and/or the exact search, log it.

Flow: read the supernet (ours or the reference's), build the FLOPs table and the BN
indicator matrix of its config, pick the FLOPs limit (--flops-limit / --params-limit read by
`utils.flops.limits.parse_limit`: millions, or raw counts as the reference takes them), then
* EA (`--method ea|both`): resumable per generation - the log is rewritten atomically
  after every generation with the complete EA state (generator included), so rerunning
  the same command continues where it stopped and ends exactly where an uninterrupted
  run ends; a finished log with the same settings is only reported;
* exact (`--method exact|both`, additive scorers only): the multiple-choice knapsack of
  `utils.search.exact`, which proves the best architecture under the limits;
then print the top-k, the EA's best vs the proven optimum, and scoring times. What scores
the candidates is the scorer named by --score (utils.search.scorers.SCORERS; a --plugin
file may register more).
Settings can come from `--config FILE.yaml` (utils.cli.config_file); a search that runs
writes its resolved settings to LOG_DIR/config.yaml.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch

from utils.search import indicator
from utils.files import check_output_dir, clean_stale_temps
from utils.cli.config_file import add_config_arg, write_settings
from utils.data.loaders import add_dataset_arg
from utils.cli.common import (POPULATION_MAX, ArgumentParser, UserError, batch_size_int, int_range,
                       nonneg_int, population_int, positive_int, probability, seed_int,
                       workers_int)
from utils.dist import launcher_rank
from utils.logs import get_logger, setup_logging
from utils.plugins import add_plugin_arg
from utils.search.evolution import ChoiceSampler, EASettings, Evolution, upgrade_state
from utils.search.exact import solve
from utils.search.scorers import DEFAULT_SCORER, SCORERS, ScoreContext, check_method
from utils.flops.table import load_table
from utils.search.diagnostics import diagnose, spread_lines
from utils.flops.limits import cost_range, default_flops_limit, parse_limit
from utils.checkpoints.lock import OutputLock
from utils.search.log import (LOG_JSON, LOG_PTH, candidate_list, load_log, load_pth,
                              rank_key, ranked, write_log)
from utils.spaces import get_space
from utils.checkpoints.supernet import load_supernet

log = get_logger(__name__)

# Version 2: `memory` is the reference's per-generation population; the top-k history
# that version 1 kept there is `keep_top_history` (utils.search.evolution.upgrade_state).
LOG_VERSION = 2
EA_STATE_KEYS = ("memory", "keep_top_history", "candidates", "vis_dict", "keep_top_k", "epoch",
                 "initialised", "populations", "stats", "score_seconds", "rng_state")
LOCK_NAME = ".lock"  # in the log folder, while a search runs on it
SETTINGS_NAME = "config.yaml"  # the run's resolved settings, in the log folder
PENDING_SAVE_SECONDS = 60.0  # non-additive scoring: save finished scores this often
GENERATIONS_MAX = 1_000_000  # --max-epochs


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="BN-NAS search: evolutionary search and/or the exact (provably optimal) "
                    "search of the best architecture under a FLOPs limit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoint.pth.tar",
                   help="supernet checkpoint (ours or a reference BN-NAS one)")
    p.add_argument("--log-dir", "--log_dir", dest="log_dir", default="log",
                   help="where ea_results.pth.tar / ea_results.json go")
    g = p.add_argument_group("evolution (reference flags and defaults)")
    g.add_argument("--max-epochs", "--max_epochs", dest="max_epochs",
                   type=int_range(0, GENERATIONS_MAX), default=20,
                   help="generations")
    g.add_argument("--select-num", "--select_num", dest="select_num",
                   type=population_int, default=10,
                   help="top-k kept as parents")
    g.add_argument("--population-num", "--population_num", dest="population_num",
                   type=population_int, default=50,
                   help=f"candidates per generation (at most {POPULATION_MAX:,})")
    g.add_argument("--m_prob", "--m-prob", dest="m_prob", type=probability, default=0.1,
                   help="per-gene mutation probability")
    g.add_argument("--crossover-num", "--crossover_num", dest="crossover_num",
                   type=int_range(0, POPULATION_MAX), default=25)
    g.add_argument("--mutation-num", "--mutation_num", dest="mutation_num",
                   type=int_range(0, POPULATION_MAX), default=25)
    # Parsed by utils.flops.limits.parse_limit after argparse, so a bad value is one line.
    g.add_argument("--flops-limit", "--flops_limit", dest="flops_limit", default=None,
                   help="MFLOPs (multiply-adds, in millions): 475 and 475M mean 475M; a plain "
                        "number >= 1e5 is a raw count as the reference takes it (475e6, "
                        "475000000 also mean 475M); default 475 for mobilenet / 330 for "
                        "shufflenet at the ImageNet setting, else the same relative position "
                        "between the config's cheapest and costliest architecture")
    g.add_argument("--params-limit", "--params_limit", dest="params_limit", default=None,
                   help="M parameters (both methods): 5.2 and 5.2M mean 5.2M; a plain number "
                        ">= 1e5 is a raw count (5.2e6)")
    g.add_argument("--seed", type=seed_int, default=0, help="0 <= seed < 2**32")
    g.add_argument("--topk", type=positive_int, default=10, help="how many to print")
    g.add_argument("--method", choices=["ea", "exact", "both"], default="both",
                   help="evolutionary search, exact search, or both (reports the gap)")
    g.add_argument("--score", choices=SCORERS.names(), default=DEFAULT_SCORER,
                   help="what ranks the candidates: " + "; ".join(
                       f"{n}: {c.help or c.label}" for n, c in SCORERS.items())
                   + " (--method exact needs a sum over layers: "
                   + ", ".join(n for n, c in SCORERS.items() if c.additive) + ")")
    a = p.add_argument_group("SPOS accuracy scoring (--score accuracy)")
    a.add_argument("--train_dir", "--train-dir", dest="train_dir", default="../../data/train",
                   help="ImageFolder of training images (BN recalibration)")
    a.add_argument("--test_dir", "--test-dir", dest="test_dir", default="../../data/test",
                   help="ImageFolder of validation images")
    a.add_argument("--bn-batches", "--bn_batches", "--max-train-iters", dest="bn_batches",
                   type=positive_int, default=200,
                   help="training batches for BN recalibration")
    a.add_argument("--batch-size", "--batch_size", "--train-batch-size", dest="batch_size",
                   type=batch_size_int, default=128)
    a.add_argument("--val-images", "--val_images", dest="val_images", type=positive_int,
                   default=10000,
                   help="size of the fixed validation subset")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a.add_argument("--workers", type=workers_int, default=4, help="image decoding processes")
    a.add_argument("--input-format", "--input_format", dest="input_format", default=None,
                   choices=["rgb", "bgr255"],
                   help="input convention (default: the one the supernet was trained with)")
    add_dataset_arg(a, default=None,
                    help="what --train_dir / --test_dir hold, also for the zero-cost proxies "
                         "(default: the dataset the supernet was trained on, else "
                         "imagefolder)")
    for _, cls in SCORERS.items():  # flags of the other scorers (plug-ins' too)
        cls.add_arguments(p)
    # Hidden: stop after a generation (resume tests); the legacy launcher's rank flag.
    p.add_argument("--stop-after-generation", type=positive_int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--local_rank", "--local-rank", type=nonneg_int, default=None,
                   help=argparse.SUPPRESS)
    add_plugin_arg(p)
    add_config_arg(p, "search/ea.py")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("max_epochs", "mutation_num", "crossover_num"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("select_num", "population_num", "topk"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.m_prob <= 1.0:
        raise UserError(f"--m_prob must be in [0, 1], got {args.m_prob}")
    check_method(args.score, args.method)


def _fmt_m(x) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}M"


class Search:
    def __init__(self, args: argparse.Namespace):
        _check_args(args)
        self.args = args
        # Read the limits before the (slow) supernet load, so a bad value fails at once.
        self.flops_arg = None if args.flops_limit is None else parse_limit(args.flops_limit)
        self.params_arg = (None if args.params_limit is None
                           else parse_limit(args.params_limit, "params"))
        self.scorer = scorer = SCORERS.get(args.score)()
        t0 = time.perf_counter()
        self.ck = ck = load_supernet(args.checkpoint)
        self.cfg = cfg = ck.config
        self.space = get_space(cfg)
        self.table = load_table(cfg)
        # The BN indicator is logged (and diagnosed) whatever the scorer: eval.py and the
        # heatmap read it.
        try:
            self.matrix = indicator.indicator_matrix(self.space, ck.state_dict)
        except UserError as e:  # a diverged supernet: name the file
            raise UserError(f"{args.checkpoint}: {e}") from None
        scorer.validate_checkpoint(ck, args.checkpoint)
        self.context = ScoreContext(space=self.space, table=self.table,
                                    state_dict=ck.state_dict, checkpoint=ck,
                                    checkpoint_path=args.checkpoint, args=args,
                                    indicator=self.matrix)
        log.info(f"supernet {args.checkpoint}: {cfg.describe()}"
                 + (" (reference BN-NAS checkpoint)" if ck.reference else "")
                 + f", loaded in {time.perf_counter() - t0:.2f}s")
        # Layers whose ops the indicator cannot tell apart (utils/search/diagnostics.py).
        self.diagnostics = diagnose(self.space, self.matrix)
        if scorer.bn_diagnostics:
            for line in spread_lines(self.space, self.diagnostics):
                log.info(line)
        scorer.check_supernet(ck, args.checkpoint)
        self._limits()
        self.settings = EASettings(args.max_epochs, args.select_num, args.population_num,
                                   args.m_prob, args.crossover_num, args.mutation_num, args.seed)
        self.method = args.method
        if not scorer.additive and args.method == "both":
            log.info(f"note: --score {args.score} is not a sum over layers, so there is no "
                     f"exact search; running the EA only")
            self.method = "ea"
        self.log_pth = os.path.join(args.log_dir, LOG_PTH)
        self.prepared = False
        self.candidate_seconds: list[float] = []  # non-additive scoring, this process

    # ---- checks ----------------------------------------------------------------------
    def _limits(self) -> None:
        lo, hi = cost_range(self.space, self.table, "flops")
        fa, pa = self.flops_arg, self.params_arg
        if fa is None:
            limit_m, why = default_flops_limit(self.cfg)
            log.info(f"FLOPs limit: {limit_m:.2f}M (default: {why})")
            self.limit_rule, self.flops_limit = why, limit_m * 1e6
            self.flops_reading = "default"
        else:
            # The raw count as given (not millions * 1e6), so 475e6 stays exactly 475e6.
            limit_m, self.flops_limit = fa.millions, fa.count
            log.info(f"FLOPs limit: {limit_m:.2f}M ({fa.explained})")
            self.limit_rule, self.flops_reading = "--flops-limit", fa.explained
        if self.flops_limit < lo:
            raise UserError(f"--flops-limit {limit_m:g}M is below the cheapest architecture of "
                            f"this space ({lo / 1e6:.2f}M): nothing fits")
        self.flops_limit_m = limit_m
        self.flops_range = (lo, hi)
        self.limit_warnings: list[str] = []
        self.flops_excludes_nothing = self.flops_limit >= hi
        if self.flops_excludes_nothing:
            self._warn_limit(f"the FLOPs limit {limit_m:.2f}M is at or above the costliest "
                             f"architecture of this space ({hi / 1e6:.2f}M): it excludes nothing")
        self.params_limit_m = None if pa is None else pa.millions
        self.params_limit = None if pa is None else pa.count
        self.params_reading = None if pa is None else pa.explained
        self.params_excludes_nothing = None
        if pa is not None:
            log.info(f"params limit: {pa.millions:.2f}M ({pa.explained})")
            plo, phi = cost_range(self.space, self.table, "params")
            if self.params_limit < plo:
                raise UserError(f"--params-limit {pa.millions:g}M is below the smallest "
                                f"architecture of this space ({plo / 1e6:.2f}M params)")
            self.params_excludes_nothing = self.params_limit >= phi
            if self.params_excludes_nothing:
                self._warn_limit(f"the params limit {pa.millions:.2f}M is at or above the "
                                 f"largest architecture of this space ({phi / 1e6:.2f}M): it "
                                 f"excludes nothing")

    def _warn_limit(self, msg: str) -> None:
        log.info(f"warning: {msg}")
        self.limit_warnings.append(msg)

    # ---- log identity ----------------------------------------------------------------
    def signature(self) -> dict:
        a = self.args
        sig = dict(config=self.cfg.to_dict(), score_kind=a.score,
                   flops_limit_m=round(self.flops_limit_m, 6),
                   params_limit_m=(None if self.params_limit_m is None
                                   else round(self.params_limit_m, 6)),
                   **{k: v for k, v in self.settings.to_dict().items() if k != "max_epochs"})
        sig.update(self.scorer.signature(self.context))  # what the scores depend on
        return sig

    def _existing(self, sig: dict) -> dict | None:
        if not os.path.exists(self.log_pth):
            return None
        old = load_pth(self.log_pth)
        if old.get("kind") != "search":
            raise UserError(f"{self.log_pth} is not a log of this program (a reference log?); "
                            f"use another --log-dir to search again")
        old_sig = old.get("settings") or {}
        diff = [f"{k}: {old_sig.get(k)} (log) vs {sig.get(k)} (now)"
                for k in sorted(set(sig) | set(old_sig)) if old_sig.get(k) != sig.get(k)]
        if diff:
            raise UserError(f"{self.log_pth} holds a search with other settings "
                            f"({'; '.join(diff)[:300]}); use another --log-dir or remove it")
        return old

    # ---- scoring -----------------------------------------------------------------------
    def _prepare(self) -> None:
        if not self.prepared:
            self.scorer.prepare(self.context)
            self.prepared = True

    def _objective(self, archs: np.ndarray) -> np.ndarray:
        self._prepare()
        return self.scorer.objective(archs)

    def _costs(self, archs: np.ndarray):
        return self.table.flops_of(archs), self.table.params_of(archs)

    def _one_by_one(self, pending: dict):
        """Score function of a non-additive scorer: one candidate at a time, each printed,
        finished scores kept in `pending` (and saved now and then) for a resume."""
        self._prepare()
        last_save = [time.monotonic()]

        def score(archs: np.ndarray) -> np.ndarray:
            out = []
            for k, arch in enumerate(np.atleast_2d(archs)):
                key = tuple(int(x) for x in arch)
                if key not in pending:
                    t0 = time.perf_counter()
                    pending[key] = float(self.scorer.objective(np.array([key]))[0])
                    self.candidate_seconds.append(time.perf_counter() - t0)
                    log.info(f"  candidate {k + 1}/{len(archs)}: "
                             f"{self.scorer.format_value(pending[key])} "
                             f"({self.candidate_seconds[-1]:.1f}s)")
                    if time.monotonic() - last_save[0] > PENDING_SAVE_SECONDS:
                        # Keep finished scores of the unfinished generation: a rerun
                        # re-proposes the same candidates and takes them from here.
                        self._write(self._snapshot, pending=pending, with_json=False)
                        last_save[0] = time.monotonic()
                out.append(pending[key])
            return np.array(out, dtype=np.float64)

        return score

    # ---- output ------------------------------------------------------------------------
    def _pth(self, ea_state: dict | None, pending: dict | None = None) -> dict:
        base = dict(memory=[], candidates=[], vis_dict={}, keep_top_k={}, epoch=0)
        obj = dict(base, **(ea_state or {}))
        obj.update(kind="search", version=LOG_VERSION, config=self.cfg.to_dict(),
                   settings=self.sig, method=self.method, score_kind=self.args.score,
                   seed=self.args.seed, max_epochs=self.settings.max_epochs,
                   flops_limit=self.flops_limit, flops_limit_mflops=self.flops_limit_m,
                   params_limit=self.params_limit, **self._limit_fields(),
                   checkpoint=os.path.abspath(self.args.checkpoint),
                   indicator=torch.from_numpy(self.matrix.copy()), exact=self.exact,
                   timing=self.timing, finished=self.finished, pending_scores=pending or {},
                   classes=self.ck.classes)
        return obj

    def _json(self, ea_state: dict | None) -> dict:
        vis = (ea_state or {}).get("vis_dict") or {}
        cands = candidate_list(vis)
        best = min(cands, key=rank_key) if cands else None
        if best is None and self.exact is not None:
            best = self.exact
        best = None if best is None else {k: best.get(k) for k in
                                          ("arch", "score", "flops", "params", "generation")}
        gap = (self.exact["score"] - best["score"]) if (self.exact and best) else None
        return dict(version=LOG_VERSION, method=self.method, score_kind=self.args.score,
                    seed=self.args.seed, config=self.cfg.to_dict(), config_text=self.cfg.describe(),
                    checkpoint=os.path.abspath(self.args.checkpoint),
                    supernet=dict(reference=self.ck.reference, train_all=self.ck.train_all,
                                  **self.ck.info),
                    classes=self.ck.classes,
                    flops_limit=self.flops_limit, flops_limit_mflops=self.flops_limit_m,
                    flops_limit_rule=self.limit_rule, flops_range=list(self.flops_range),
                    params_limit=self.params_limit, **self._limit_fields(),
                    settings=self.settings.to_dict(),
                    generations=(ea_state or {}).get("epoch", 0), finished=self.finished,
                    best=best, exact=self.exact, gap=gap, timing=self.timing,
                    op_names=list(self.space.op_names), indicator=self.matrix.tolist(),
                    indicator_diagnostics=self.diagnostics, candidates=cands)

    def _limit_fields(self) -> dict:
        return dict(flops_limit_reading=self.flops_reading,
                    flops_limit_excludes_nothing=self.flops_excludes_nothing,
                    params_limit_mparams=self.params_limit_m,
                    params_limit_reading=self.params_reading,
                    params_limit_excludes_nothing=self.params_excludes_nothing,
                    limit_warnings=list(self.limit_warnings))

    def _write(self, ea_state: dict | None, pending: dict | None = None,
               with_json: bool = True) -> None:
        write_log(self.args.log_dir, self._pth(ea_state, pending),
                  self._json(ea_state) if with_json else None)

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        self.sig = self.signature()
        old = self._existing(self.sig)
        self.exact, self.timing, self.finished = None, {}, False
        ea = None
        pending: dict = {}
        wants_ea = self.method in ("ea", "both")
        kept = None  # an EA state of this log that a --method exact run must not drop
        self._score = self._objective
        if wants_ea:
            ea = Evolution(self.space, self.settings, lambda a: self._score(a), self._costs,
                           self.flops_limit, self.params_limit,
                           reference_keys=self.scorer.reference_keys, log=log.info)
        if old is not None:
            if old.get("initialised"):
                old = self._upgrade(old)
            if wants_ea and old.get("initialised"):
                ea.load_state_dict(old)
            elif not wants_ea and old.get("initialised"):
                kept = {k: old[k] for k in EA_STATE_KEYS if k in old}
            pending = dict(old.get("pending_scores") or {})
            self.timing = dict(old.get("timing") or {})
            done = (not wants_ea or ea.finished) and old.get("finished") \
                and old.get("method") == self.method
            if done:
                log.info(f"{self.log_pth} already holds this finished search; reporting it "
                         f"(remove it or use another --log-dir to search again)")
                self.exact, self.finished = old.get("exact"), True
                self.report(load_log(args.log_dir))
                return
            if wants_ea and ea.initialised:
                log.info(f"resuming {self.log_pth} after generation {ea.epoch} of "
                         f"{self.settings.max_epochs}")
        one_by_one = not self.scorer.additive  # slow scorers: progress and partial saves
        if wants_ea:
            self._snapshot = copy.deepcopy(ea.state_dict())
            self._prepare()  # before the EA's first line (the SPOS data are read here)
            if one_by_one:
                self._score = self._one_by_one(pending)
            s = self.settings
            log.info(f"EA: population {s.population_num}, top {s.select_num}, "
                     f"{s.mutation_num} mutations (p={s.m_prob}), {s.crossover_num} "
                     f"crossovers, {s.max_epochs} generations, seed {s.seed}, FLOPs <= "
                     f"{self.flops_limit_m:.2f}M"
                     + (f", params <= {self.params_limit_m:g}M" if self.params_limit else ""))
            self._write_settings()
            stopped = [False]

            def after(e: Evolution, stat: dict) -> bool:
                best = e.best()
                log.info(f"generation {stat['generation']:>2}/{s.max_epochs}: {stat['new']} "
                         f"new ({stat['mutation']} mutation, {stat['crossover']} crossover, "
                         f"{stat['random']} random), best {best[1]['score']:.4f} at "
                         f"{_fmt_m(best[1]['flops'])} FLOPs, {stat['seconds']:.3f}s"
                         if best else f"generation {stat['generation']}: no candidate fits")
                state = e.state_dict()
                pending.clear()
                self._write(state)
                if one_by_one:
                    self._snapshot = copy.deepcopy(state)
                if args.stop_after_generation is not None and \
                        stat["generation"] >= args.stop_after_generation and not e.finished:
                    log.info(f"stopping after generation {stat['generation']} as asked; rerun "
                             f"the same command to continue")
                    stopped[0] = True
                    return True
                return False

            ea.run(after)
            if stopped[0]:
                return
            self.timing.update(ea_seconds=sum(st["seconds"] for st in ea.stats),
                               ea_score_seconds=ea.score_seconds,
                               ea_candidates=len(ea.vis_dict))
        if self.method in ("exact", "both"):
            if not wants_ea:
                self._write_settings()
            self._exact()
        self._time_1000(ea)
        self.finished = True
        self._write(ea.state_dict() if ea else kept)
        self.report(load_log(args.log_dir))

    def _write_settings(self) -> None:
        """LOG_DIR/config.yaml: this run's settings (--config reruns them), written once
        every check has passed and the search starts."""
        write_settings(self.args, os.path.join(self.args.log_dir, SETTINGS_NAME),
                       notes=[f"supernet: {self.cfg.describe()}",
                              f"FLOPs limit: {self.flops_limit_m:.2f}M ("
                              + (f"default: {self.limit_rule}" if self.flops_reading == "default"
                                 else self.flops_reading) + ")"])

    def _upgrade(self, old: dict) -> dict:
        """An EA state of a version-1 log, with memory in the reference's meaning."""
        if "keep_top_history" in old:
            return old
        try:
            new = upgrade_state(old)
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{self.log_pth} is an EA log of an older version that cannot be "
                            f"resumed (no per-generation populations); use another --log-dir "
                            f"or remove it") from None
        log.info(f"note: {self.log_pth} is a version-{old.get('version', 1)} log: its memory "
                 f"(the top-{self.settings.select_num} history) is read as keep_top_history, "
                 f"and memory is rebuilt from its per-generation populations, as the "
                 f"reference's")
        return new

    def _exact(self) -> None:
        self._prepare()
        res = solve(self.scorer.objective_matrix(), self.table.flops, self.space.allowed_mask(), self.flops_limit,
                    params=self.table.params, params_limit=self.params_limit,
                    base_flops=self.table.base_flops, base_params=self.table.base_params)
        if res is None:
            raise UserError(f"no architecture fits FLOPs <= {self.flops_limit_m:g}M and "
                            f"params <= {self.params_limit_m}M together")
        # Re-score with the EA's own function, so equal architectures get equal floats.
        score = float(self._objective(np.array([res.arch]))[0])
        self.exact = dict(arch=list(res.arch), score=score, flops=res.flops,
                          params=self.table.params_of(res.arch), seconds=res.seconds,
                          max_front=res.max_front)
        self.timing["exact_seconds"] = res.seconds

    def _time_1000(self, ea: Evolution | None) -> None:
        """The reference's figure: time to score 1,000 candidates with the BN indicator
        (here also as one batch), and a non-additive scorer's time per candidate."""
        archs = list(ea.vis_dict)[:1000] if ea else []
        rng = np.random.default_rng(self.args.seed)
        if len(archs) < 1000:
            extra = ChoiceSampler(self.space).draw(rng, 1000 - len(archs))
            archs += [tuple(a) for a in extra.tolist()]
        a = np.array(archs, dtype=np.int64)
        t0 = time.perf_counter()
        for arch in a:
            indicator.score(self.matrix, arch)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        indicator.score(self.matrix, a)
        batch = time.perf_counter() - t0
        self.timing.update(score_1000_seconds=one, score_1000_batch_seconds=batch)
        if self.candidate_seconds:
            per = float(np.mean(self.candidate_seconds))
            key = self.scorer.timing_key
            self.timing.update({f"{key}_seconds_per_candidate": per,
                                f"{key}_1000_seconds": 1000 * per})

    # ---- report ------------------------------------------------------------------------
    def report(self, result: dict) -> None:
        sc = self.scorer
        r = ranked(result)
        log.info(f"\ntop {min(self.args.topk, len(r))} of {len(r)} ({sc.description}):")
        for i, c in enumerate(r[:self.args.topk]):
            gen = "" if c.get("generation") is None else f", gen {c['generation']}"
            log.info(f"{i + 1:>3}. {' '.join(map(str, c['arch']))}  score {c['score']:.4f}  "
                     f"FLOPs {_fmt_m(c['flops'])}  params {_fmt_m(c.get('params'))}  "
                     f"[{c['found_by']}{gen}]")
        cands = result.get("candidates") or []
        if cands:
            b = min(cands, key=rank_key)
            log.info(f"EA best:       {' '.join(map(str, b['arch']))}  score "
                     f"{b['score']:.4f}  FLOPs {_fmt_m(b['flops'])}  ({len(cands)} "
                     f"candidates scored)")
        ex = result.get("exact")
        if ex:
            log.info(f"exact optimum: {' '.join(map(str, ex['arch']))}  score "
                     f"{ex['score']:.4f}  FLOPs {_fmt_m(ex['flops'])}  (proven; "
                     f"{ex['seconds'] * 1e3:.1f} ms)")
            if cands:
                gap = ex["score"] - b["score"]
                rel = gap / abs(ex["score"]) if ex["score"] else 0.0
                log.info(f"gap (exact - EA): {gap:.6f} ({rel:.3%})")
        t = result.get("timing") or self.timing
        if "score_1000_seconds" in t:
            log.info(f"Time for scoring 1000 candidates: {t['score_1000_seconds']:.6f}s one "
                     f"at a time (as the reference), {t['score_1000_batch_seconds']:.6f}s as "
                     f"one batch")
        key = sc.timing_key
        if f"{key}_1000_seconds" in t:
            log.info(f"{sc.timing_name or sc.label} scoring: "
                     f"{t[f'{key}_seconds_per_candidate']:.2f}s per candidate, "
                     f"{t[f'{key}_1000_seconds']:.0f}s per 1000 candidates")
        if "ea_seconds" in t:
            log.info(f"EA wall time: {t['ea_seconds']:.3f}s; results in {self.args.log_dir}/")


def run_search(args: argparse.Namespace) -> None:
    rank = launcher_rank(args.local_rank)
    setup_logging(rank=rank)
    if rank != 0:  # the search is one process; a multi-GPU launch must not race on the log
        log.info(f"rank {rank}: the search runs in rank 0 only; exiting",
                 extra={"all_ranks": True})
        return
    check_output_dir(args.log_dir, "--log-dir")  # before the (slow) supernet load
    # One search per log folder: a second run on it refuses, naming the first's PID.
    with OutputLock(os.path.join(args.log_dir, LOCK_NAME), what=f"search log {args.log_dir}",
                    log=log.info):
        clean_stale_temps(os.path.join(args.log_dir, LOG_PTH),
                          os.path.join(args.log_dir, LOG_JSON),
                          os.path.join(args.log_dir, SETTINGS_NAME), log=log.info)
        Search(args).run()
