"""The evolutionary search of SPOS / BN-NAS, resumable and exactly repeatable.

One generation, as in the reference: the population's candidates enter the top-k; the
next population is `mutation_num` mutants and `crossover_num` children of the top
`select_num`, refilled with random architectures up to `population_num`. A proposal is
accepted only if it fits the limits and was never accepted before, so each candidate is
scored once. Differences from the reference, on purpose:

* Proposals are drawn in numpy batches from one seeded `np.random.Generator` and checked
  against the FLOPs table in one gather; all of a generation's new candidates are then
  scored in one call (the reference scored them one by one as they were proposed; since
  proposals never depend on the new scores, the search is the same kind of search).
* Mutation and random sampling draw from each layer's allowed ops (forced skips stay -1,
  free skips are drawn where the space allows them) instead of drawing 0..5 and then
  overwriting the forced layers.
* The random refill gives up after a fixed number of draws (the reference loops forever
  when the limit is so tight that random architectures never fit).
* `state_dict()` after every generation holds everything the next one depends on,
  including the generator state, so a resumed run equals an uninterrupted one.

`memory` has the reference's meaning: one list per generation of the population that
generation started from (arch tuples, so they index vis_dict). The top `select_num` after
each generation, which `memory` held in logs before version 2, is `keep_top_history`;
`upgrade_state` converts such older states.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from utils.logs import get_logger
from utils.search.log import rank_key
from utils.spaces import SearchSpace

logger = get_logger(__name__)

Arch = tuple[int, ...]
TOP_LIST = 50  # the reference also keeps a top-50 list, for printing
RANDOM_ROUNDS = 200  # random-refill batches before giving up on a tight limit


@dataclass(frozen=True)
class EASettings:
    max_epochs: int = 20
    select_num: int = 10
    population_num: int = 50
    m_prob: float = 0.1
    crossover_num: int = 25
    mutation_num: int = 25
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _entry_key(arch: Arch, info: dict) -> tuple:
    """The log's ranking (utils.search.log.rank_key) of a vis_dict entry."""
    return rank_key(dict(info, arch=arch))


def indicator_keys(value: float) -> dict:
    """The reference BN-NAS's vis_dict key: `err`, minus the score (lower is better)."""
    return dict(err=-float(value))


def upgrade_state(state: dict) -> dict:
    """`state` with `memory` as the reference's per-generation populations.

    States written before `keep_top_history` existed (log version 1) held the top-k
    history under `memory`; their `populations` give the real memory exactly (generation
    g started from populations[g]). Raises ValueError when neither key is there.
    """
    if "keep_top_history" in state:
        return state
    if "populations" not in state:
        raise ValueError("the EA state has neither keep_top_history nor populations")
    out = dict(state, keep_top_history=[list(map(list, g)) for g in state.get("memory") or []])
    out["memory"] = [[tuple(c) for c in g] for g in state["populations"][:int(state["epoch"])]]
    return out


class ChoiceSampler:
    """Uniform draws from each layer's allowed ops, vectorised over a batch."""

    def __init__(self, space: SearchSpace):
        allowed = [space.allowed(i) for i in range(space.num_layers)]
        width = max(len(a) for a in allowed)
        self.table = np.array([list(a) + [a[0]] * (width - len(a)) for a in allowed],
                              dtype=np.int64)  # [L, width], padded (never drawn)
        self.counts = np.array([len(a) for a in allowed], dtype=np.int64)
        self.rows = np.arange(space.num_layers)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pick = np.floor(rng.random((n, len(self.counts))) * self.counts).astype(np.int64)
        return self.table[self.rows, pick]


class Evolution:
    """Evolutionary search over `space`; scores come from `score_fn([N, L] int64) -> [N]`
    (higher is better).

    `cost_fn(archs) -> (flops [N], params [N])` gives the costs; a candidate is feasible
    when flops <= flops_limit and (if set) params <= params_limit. `reference_keys(score)`
    gives the reference's extra keys of a vis_dict entry (`err`, and `acc` for SPOS: the
    scorer's `reference_keys`); `log` takes the warning lines.
    """

    def __init__(self, space: SearchSpace, settings: EASettings,
                 score_fn: Callable[[np.ndarray], np.ndarray],
                 cost_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 flops_limit: float, params_limit: float | None = None,
                 reference_keys: Callable[[float], dict] = indicator_keys,
                 log: Callable[[str], None] | None = None):
        if settings.select_num < 1 or settings.population_num < 1:
            raise ValueError("--select-num and --population-num must be at least 1")
        self.space, self.settings = space, settings
        self.score_fn, self.cost_fn = score_fn, cost_fn
        self.flops_limit, self.params_limit = flops_limit, params_limit
        self.reference_keys = reference_keys
        self.log = log if log is not None else logger.info
        self.sampler = ChoiceSampler(space)
        self.rng = np.random.default_rng(settings.seed)
        # What the reference saves (same keys, same meaning) ...
        self.memory: list[list[Arch]] = []  # per generation: the population it started from
        self.candidates: list[Arch] = []  # the current population
        self.vis_dict: dict[Arch, dict] = {}  # every scored candidate
        self.keep_top_k: dict[int, list[Arch]] = {settings.select_num: [], TOP_LIST: []}
        self.epoch = 0
        # ... and what exact resumption needs besides.
        self.initialised = False
        self.keep_top_history: list[list[list[int]]] = []  # per generation: its top select_num
        self.populations: list[list[list[int]]] = []
        self.stats: list[dict] = []  # per generation: counts and seconds
        self.score_seconds = 0.0
        self._warned = False

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain Python values only (weights_only-loadable); tuple keys are fine there."""
        return dict(memory=[[tuple(c) for c in g] for g in self.memory],
                    keep_top_history=self.keep_top_history,
                    candidates=[list(c) for c in self.candidates],
                    vis_dict=self.vis_dict,
                    keep_top_k={k: [list(c) for c in v] for k, v in self.keep_top_k.items()},
                    epoch=self.epoch, initialised=self.initialised,
                    populations=self.populations, stats=self.stats,
                    score_seconds=self.score_seconds, rng_state=self.rng.bit_generator.state)

    def load_state_dict(self, state: dict) -> None:
        state = upgrade_state(state)
        self.memory = [[tuple(int(a) for a in c) for c in g] for g in state["memory"]]
        self.keep_top_history = [list(map(list, g)) for g in state["keep_top_history"]]
        self.candidates = [tuple(c) for c in state["candidates"]]
        self.vis_dict = {tuple(int(a) for a in k): dict(v) for k, v in state["vis_dict"].items()}
        self.keep_top_k = {int(k): [tuple(c) for c in v] for k, v in state["keep_top_k"].items()}
        self.epoch = int(state["epoch"])
        self.initialised = bool(state["initialised"])
        self.populations = [list(map(list, g)) for g in state["populations"]]
        self.stats = list(state["stats"])
        self.score_seconds = float(state["score_seconds"])
        self.rng.bit_generator.state = state["rng_state"]

    @property
    def finished(self) -> bool:
        return self.initialised and self.epoch >= self.settings.max_epochs

    # ---- proposals -----------------------------------------------------------------
    def _accept(self, proposals: np.ndarray, taken: dict[Arch, str], origin: str,
                want: int) -> int:
        """Add feasible, never-seen proposals (in order) to `taken` until `want` are in."""
        if want <= 0 or len(proposals) == 0:
            return 0
        flops, params = self.cost_fn(proposals)
        ok = flops <= self.flops_limit
        if self.params_limit is not None:
            ok &= params <= self.params_limit
        added = 0
        for k in np.flatnonzero(ok):
            arch = tuple(int(a) for a in proposals[k])
            if arch in self.vis_dict or arch in taken:
                continue
            taken[arch] = origin
            added += 1
            if added == want:
                break
        return added

    def _parents(self, n: int) -> np.ndarray:
        top = np.array(self.keep_top_k[self.settings.select_num], dtype=np.int64)
        return top[self.rng.integers(0, len(top), n)]

    def _mutations(self, taken: dict[Arch, str]) -> None:
        s = self.settings
        if not self.keep_top_k[s.select_num] or s.mutation_num <= 0:
            return
        got = 0
        for _ in range(10):  # the reference tries 10 * mutation_num proposals at most
            parents = self._parents(s.mutation_num)
            genes = self.sampler.draw(self.rng, s.mutation_num)
            flip = self.rng.random(parents.shape) < s.m_prob
            got += self._accept(np.where(flip, genes, parents), taken, "mutation",
                                s.mutation_num - got)
            if got >= s.mutation_num:
                break

    def _crossovers(self, taken: dict[Arch, str]) -> None:
        s = self.settings
        if not self.keep_top_k[s.select_num] or s.crossover_num <= 0:
            return
        got = 0
        for _ in range(10):
            a, b = self._parents(s.crossover_num), self._parents(s.crossover_num)
            pick_a = self.rng.random(a.shape) < 0.5
            got += self._accept(np.where(pick_a, a, b), taken, "crossover",
                                s.crossover_num - got)
            if got >= s.crossover_num:
                break

    def _random_fill(self, taken: dict[Arch, str], have: int) -> None:
        need = self.settings.population_num - have
        batch = max(256, 4 * need)
        for _ in range(RANDOM_ROUNDS):
            if need <= 0:
                return
            need -= self._accept(self.sampler.draw(self.rng, batch), taken, "random", need)
        if need > 0 and not self._warned:
            self._warned = True  # once per run: the same limit gives the same shortfall
            self.log(f"warning: only {self.settings.population_num - need} of "
                     f"{self.settings.population_num} candidates found under the limits "
                     f"after {RANDOM_ROUNDS * batch} random draws; continuing with fewer")

    # ---- scoring -------------------------------------------------------------------
    def _score_new(self, taken: dict[Arch, str], generation: int) -> list[Arch]:
        archs = list(taken)
        if not archs:
            return []
        a = np.array(archs, dtype=np.int64)
        t0 = time.perf_counter()
        scores = np.asarray(self.score_fn(a), dtype=np.float64)
        self.score_seconds += time.perf_counter() - t0
        flops, params = self.cost_fn(a)
        for arch, sc, f, p in zip(archs, scores.tolist(), flops.tolist(), params.tolist()):
            info = dict(score=float(sc), flops=int(f), params=int(p), generation=generation,
                        origin=taken[arch], visited=True)
            info.update(self.reference_keys(float(sc)))  # `err` (lower is better), ...
            self.vis_dict[arch] = info
        return archs

    def _update_top_k(self, new: list[Arch]) -> None:
        for k in self.keep_top_k:
            merged = self.keep_top_k[k] + [c for c in new if c not in self.keep_top_k[k]]
            merged.sort(key=lambda c: _entry_key(c, self.vis_dict[c]))
            self.keep_top_k[k] = merged[:k]

    # ---- the loop ------------------------------------------------------------------
    def step(self) -> dict:
        """Run the next piece of work (the first population, or one generation)."""
        t0 = time.perf_counter()
        taken: dict[Arch, str] = {}
        if not self.initialised:
            self._random_fill(taken, 0)
            self.candidates = self._score_new(taken, 0)
            self.initialised = True
            generation = 0
        else:
            s = self.settings
            # As the reference: memory gets the population before it enters the top-k.
            self.memory.append([tuple(c) for c in self.candidates])
            self._update_top_k(self.candidates)
            self.keep_top_history.append([list(c) for c in self.keep_top_k[s.select_num]])
            self._mutations(taken)
            self._crossovers(taken)
            self._random_fill(taken, len(taken))
            self.epoch += 1
            generation = self.epoch
            self.candidates = self._score_new(taken, generation)
        self.populations.append([list(c) for c in self.candidates])
        origins = list(taken.values())
        stat = dict(generation=generation, new=len(taken),
                    mutation=origins.count("mutation"), crossover=origins.count("crossover"),
                    random=origins.count("random"), seconds=time.perf_counter() - t0)
        self.stats.append(stat)
        return stat

    def run(self, after_step: Callable[["Evolution", dict], bool | None] | None = None) -> None:
        """Step until finished; `after_step` (e.g. a checkpoint writer) may return True to stop."""
        while not self.finished:
            stat = self.step()
            if after_step is not None and after_step(self, stat):
                return

    # ---- results -------------------------------------------------------------------
    def ranked(self) -> list[tuple[Arch, dict]]:
        return sorted(self.vis_dict.items(), key=lambda kv: _entry_key(*kv))

    def best(self) -> tuple[Arch, dict] | None:
        r = self.ranked()
        return r[0] if r else None
