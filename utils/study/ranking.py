"""The ranking study behind tools/ranking_study.py: does the BN indicator rank subnets?

Stages (each resumable; every result is a small JSON file under the report folder,
`docs/ranking/` by default, which is committed, so a study continues on a fresh machine
from what is there and recomputes nothing that is):

1. data      - Fashion-MNIST written by utils/data/demo.py (tools/demo_data.py) (the full Debian set when it
               is installed, else the committed slice) or a given ImageFolder; then a
               class-balanced held-out split of its train set (utils/data/holdout.py):
               supernets and subnets train on the rest, SPOS scoring measures accuracy
               on the held-out images, the ground truth is top-1 on the test set.
2. archs     - N architectures in two FLOPs strata, under and over the search limit, each
               spread over its range (utils/spaces/sampling.py); `archs.json`.
3. pilot     - a third of them trained twice at each pilot budget: the seed-to-seed tau
               against cost decides the ground truth's budget (the cheapest reaching
               `tau_target`, else the largest tried).
4. truth     - every architecture trained from scratch at that budget, once per seed;
               `truth/<budget key>/<arch id>-s<seed>.json`.
5. supernets - BN-only (the original's trainable set, plus the ablations) and SPOS, each
               one run with snapshots at set iterations; what the study needs of a
               snapshot is kept as JSON (the indicator matrix; SPOS accuracies), so the
               checkpoints themselves (under --out) are never needed again.
6. predictors- BN indicator per snapshot, SPOS accuracy, FLOPs, params, random, and the
               zero-cost proxies of utils/search/zero_cost.py on each subnet at init;
               each with its compute time per candidate.
7. report    - Kendall tau / Spearman rho with bootstrap intervals for every predictor in
               both strata, the conclusion by the rule fixed before the run
               (`conclusion`), ranking.json and the plots.

Training stages run through their command lines in child processes, `parallel` at a time
(one thread each), so this module relies only on their documented flags.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from utils import files
from utils.checkpoints import io as ckpt
from utils.cli.common import REPO_ROOT, UserError

VERSION = 2
# Every stage of the study reads image folders (the PNG tree it writes, or --data).
STUDY_DATASET = "imagefolder"
STRATA = ("all", "under_limit")


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(float(v)) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what} must be a comma-separated list of integers, got {text!r}")
    if not values or min(values) < 1:
        raise UserError(f"--{what} needs positive integers, got {text!r}")
    return sorted(set(values))


@dataclass
class StudySettings:
    """Everything that decides the study's numbers (a resumed study must match them)."""

    # space: mobilenet on 28x28 Fashion-MNIST, width 0.35 - small enough for a CPU
    space: str = "mobilenet"
    input_size: int = 28
    width_mult: float = 0.35
    stem_stride: int = 2
    fixed_skips: str | None = None  # None: the space's default
    # data
    data: str | None = None  # an ImageFolder root with train/ and val/; None: demo_data
    source: str = "auto"  # auto = debian when installed, else slice
    train_per_class: int | None = None  # None: every image of the source
    val_per_class: int | None = None
    holdout_per_class: int = 500  # held out of train for SPOS scoring (5,000 of 60,000)
    # augmentation of every training stage: small centred images want mild crops
    min_scale: float = 0.85
    lighting: float = 0.0
    # supernets: one run each, snapshots at these iterations (the last = its length)
    supernet_batch: int = 64
    bn_snapshots: str = "250,500,1000,2000,4000,8000,16000,24000"
    bn_lr: float = 0.25
    # BN-only variants besides the original. The budget holds one: "all" (every BN's gamma
    # and beta). "indicator+classifier" diverged at lr 0.25 and was stopped (see the report).
    ablations: str = "all"
    spos_snapshots: str = "1000,2000,4000"  # 8,000 (~80 min on a core) did not fit
    spos_lr: float = 0.05
    # architectures and ground truth
    subnets_under: int = 15
    subnets_over: int = 15
    pilot_every: int = 3  # the pilot trains every third architecture (FLOPs order)
    # Iterations at --subnet-batch. A 2,000-iteration pilot was started and stopped after
    # 7 of its 20 trainings: its ground truth alone would cost ~9 CPU-hours (see the report).
    pilot_budgets: str = "250,750"
    tau_target: float = 0.6
    subnet_iters: int | None = None  # None: chosen by the pilot
    # What the ground truth may cost when no pilot budget reaches tau_target: training
    # hours summed over its trainings (the pilot's own trainings are reused, not counted).
    truth_hours: float = 6.0
    subnet_batch: int = 128
    subnet_lr: float = 0.1
    subnet_dropout: float = 0.0
    truth_seeds: int = 2
    flops_limit: float | None = None  # MFLOPs; None: utils.flops.limits default
    # SPOS scoring (BN recalibration on train, accuracy on the held-out split)
    spos_bn_batches: int = 20
    spos_batch: int = 128
    spos_val_images: int = 5000
    # zero-cost proxies: one fixed batch of training images
    proxy_batch: int = 64
    seed: int = 0

    def check(self) -> None:
        for name in ("supernet_batch", "subnet_batch", "truth_seeds", "spos_bn_batches",
                     "spos_batch", "spos_val_images", "proxy_batch", "pilot_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(self, name)}")
        for name in ("subnets_under", "subnets_over", "holdout_per_class"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got "
                                f"{getattr(self, name)}")
        if self.subnets_under + self.subnets_over < 3:
            raise UserError("--subnets-under plus --subnets-over must be >= 3 for a rank "
                            "correlation")
        if self.subnet_iters is not None and self.subnet_iters < 1:
            raise UserError(f"--subnet-iters must be >= 1, got {self.subnet_iters}")
        for name in ("bn_snapshots", "spos_snapshots", "pilot_budgets"):
            _ints(getattr(self, name), name.replace("_", "-"))
        for name in self.ablation_list():
            if name not in ABLATIONS:
                raise UserError(f"--ablations: unknown variant {name!r} (known: "
                                f"{', '.join(ABLATIONS)})")
        if not 0.0 < self.min_scale <= 1.0:
            raise UserError(f"--min-scale must be in (0, 1], got {self.min_scale}")
        if self.lighting < 0:
            raise UserError(f"--lighting must be >= 0, got {self.lighting}")
        if not 0.0 <= self.subnet_dropout < 1.0:
            raise UserError(f"--subnet-dropout must be in [0, 1), got {self.subnet_dropout}")
        if not -1.0 <= self.tau_target <= 1.0:
            raise UserError(f"--tau-target must be in [-1, 1], got {self.tau_target}")
        if self.source not in ("auto", "slice", "debian"):
            raise UserError(f"--source must be auto, slice or debian, got {self.source}")

    def ablation_list(self) -> list[str]:
        return [a.strip() for a in (self.ablations or "").split(",") if a.strip()]

    def space_flags(self) -> list[str]:
        flags = ["--space", self.space, "--input-size", str(self.input_size),
                 "--width-mult", str(self.width_mult), "--stem-stride", str(self.stem_stride)]
        if self.fixed_skips is not None:
            flags += ["--fixed-skips", self.fixed_skips]
        return flags

    def augment_flags(self) -> list[str]:
        return ["--min-scale", str(self.min_scale), "--lighting", str(self.lighting)]


# BN-only supernet variants: name -> supernet/main.py flags. "indicator" is the original.
ABLATIONS = {"indicator": [], "all": ["--bn-params", "all"],
             "indicator+classifier": ["--train-classifier"],
             "all+classifier": ["--bn-params", "all", "--train-classifier"]}


@dataclass
class RunOptions:
    """How the study runs (not what it computes): free to change between resumes."""

    out: str  # checkpoints and logs (not committed)
    report_dir: str  # the committed results: JSON, plots
    parallel: int = 2  # training processes at once
    threads: int = 1  # torch threads per process
    workers: int = 1
    bootstrap: int = 2000
    device: str = "cpu"  # for every stage: cpu, cuda or auto
    python: str = sys.executable
    log: Callable[[str], None] = print
    # Train nothing: report from the results on record. A supernet still short of its last
    # snapshot is reported at the snapshots it reached (marked unfinished); the ground
    # truth and the pilot must be complete.
    report_now: bool = False


# ---- child processes ------------------------------------------------------------------

_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOP = threading.Event()


def _child_env(opts: RunOptions) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(opts.threads)
    env["MKL_NUM_THREADS"] = str(opts.threads)
    if opts.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA start-up cost in every stage
    return env


def _last_error(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


class StudyStopped(Exception):
    """The study was asked to stop (Ctrl-C / SIGTERM); every stage saved its state."""


def run_stage(name: str, cmd: list[str], cwd: str, log_path: str, opts: RunOptions,
              timing: "Timing | None" = None, timing_key: str | None = None) -> float:
    """Run one stage's CLI with its output appended to `log_path`; seconds taken. With
    `timing`, the seconds are added under `timing_key` even when the stage was stopped or
    failed: the study's total counts every second it spent."""
    if _STOP.is_set():
        raise StudyStopped()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    os.makedirs(cwd, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as f:
        f.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        f.flush()
        # Own process group: a Ctrl-C reaches only this process, which then stops the
        # stages one by one with a single SIGTERM each (they save and exit).
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(opts), stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(proc)
            if _STOP.is_set():  # stop_all ran between the check above and now
                proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            if timing is not None:
                timing.add(timing_key or name, time.perf_counter() - t0)
    if _STOP.is_set():
        raise StudyStopped()
    if rc != 0:
        raise UserError(f"{name} failed (exit code {rc}): {_last_error(log_path)} "
                        f"(full log: {log_path})")
    return time.perf_counter() - t0


def stop_all(wait: float = 300.0) -> None:
    """Ask every running stage to save and exit (one SIGTERM), then wait for them."""
    with _LIVE_LOCK:
        _STOP.set()
        procs = list(_LIVE)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


class Timing:
    """Seconds per stage, accumulated over resumed invocations (report_dir/timing.json)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, float] = {}
        if os.path.exists(path):
            with open(path) as f:
                self.data = {k: float(v) for k, v in json.load(f).items()}

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.data[key] = self.data.get(key, 0.0) + seconds
            files.write_json_atomic(self.data, self.path)


def _key(obj: dict) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def arch_id(arch) -> str:
    """A short, stable name for an architecture (file names of its results)."""
    return hashlib.sha1(" ".join(map(str, arch)).encode()).hexdigest()[:10]


# ---- stage 1: data --------------------------------------------------------------------

def debian_available() -> bool:
    from utils.data import demo as demo_data
    d = os.environ.get(demo_data.DEBIAN_DIR_ENV) or str(demo_data.DEBIAN_DIR)
    return all(any(os.path.isfile(os.path.join(d, stem + ext)) for ext in (".gz", ""))
               for pair in demo_data.IDX_FILES.values() for stem in pair)


def prepare_data(s: StudySettings, opts: RunOptions, timing: Timing) -> dict:
    """{train, holdout, val, id, counts...}: the folders every stage reads."""
    from utils.data.folder import scan_image_folder
    from utils.data.holdout import make_split
    t0 = time.perf_counter()
    if s.data:
        root, source = os.path.abspath(s.data), "given"
    else:
        from utils.data import demo as demo_data
        source = s.source
        if source == "auto":
            source = "debian" if debian_available() else "slice"
        root = os.path.join(opts.out, "data")
        try:
            demo_data.write_tree(root, size=s.input_size, train_per_class=s.train_per_class,
                                 val_per_class=s.val_per_class, source=source, seed=s.seed)
        except demo_data.DemoDataError as e:
            raise UserError(str(e)) from None
    train_src = os.path.join(root, "train")
    if s.holdout_per_class > 0:
        split_dir = os.path.join(opts.out, f"split-h{s.holdout_per_class}-s{s.seed}")
        make_split(train_src, split_dir, per_class=s.holdout_per_class, seed=s.seed,
                   log=lambda m: None)
        train, holdout = os.path.join(split_dir, "train"), os.path.join(split_dir, "holdout")
    else:
        train, holdout = train_src, os.path.join(root, "val")  # no split: val (flagged)
    val = os.path.join(root, "val")
    n_train = len(scan_image_folder(train, "train split").samples)
    n_hold = len(scan_image_folder(holdout, "held-out split").samples)
    val_index = scan_image_folder(val, "val/ of the study data")
    timing.add("data", time.perf_counter() - t0)
    ident = dict(root=root) if s.data else dict(
        source=source, train_per_class=s.train_per_class, val_per_class=s.val_per_class,
        size=s.input_size, seed=s.seed)
    ident["holdout_per_class"] = s.holdout_per_class
    return dict(root=root, train=train, holdout=holdout, val=val, source=source,
                train_images=n_train, holdout_images=n_hold,
                val_images=len(val_index.samples), classes=len(val_index.classes), id=ident)


# ---- stage 2: architectures -----------------------------------------------------------

def sample_archs(s: StudySettings, cfg, report_dir: str) -> dict:
    """The study's architectures, fixed once written: archs.json in the report folder."""
    from utils.spaces.sampling import stratified_by_flops
    from utils.flops.table import load_table
    from utils.flops.limits import cost_range, default_flops_limit
    from utils.spaces import get_space
    path = os.path.join(report_dir, "archs.json")
    want = dict(config=cfg.to_dict(), under=s.subnets_under, over=s.subnets_over,
                flops_limit=s.flops_limit, seed=s.seed, pilot_every=s.pilot_every)
    old = _read_json(path)
    if old is not None:
        if old.get("request") != want:
            raise UserError(f"{path} holds the architectures of another request "
                            f"({old.get('request')}); use another --report-dir")
        return old
    space, table = get_space(cfg), load_table(cfg)
    if s.flops_limit is None:
        limit_m, rule = default_flops_limit(cfg)
    else:
        limit_m, rule = float(s.flops_limit), "--flops-limit"
    limit = limit_m * 1e6
    _, hi = cost_range(space, table, "flops")
    try:
        under = stratified_by_flops(space, table, s.subnets_under, limit, s.seed) \
            if s.subnets_under else []
        over = stratified_by_flops(space, table, s.subnets_over, float(hi), s.seed + 1,
                                   flops_floor=limit) if s.subnets_over else []
    except ValueError as e:
        raise UserError(str(e)) from None
    archs = under + over
    a = np.array(archs, dtype=np.int64)
    flops = [int(v) for v in table.flops_of(a)]
    order = sorted(range(len(archs)), key=lambda k: flops[k])
    pilot = sorted(order[::s.pilot_every])
    obj = dict(request=want, archs=[list(x) for x in archs],
               ids=[arch_id(x) for x in archs], flops=flops,
               params=[int(v) for v in table.params_of(a)],
               stratum=["under_limit"] * len(under) + ["over_limit"] * len(over),
               pilot=pilot, flops_limit=limit, flops_limit_rule=rule, config=cfg.to_dict())
    files.write_json_atomic(obj, path)
    return obj


# ---- stages 3-4: ground truth ---------------------------------------------------------

def budget_key(s: StudySettings, data: dict, config: dict, iters: int) -> str:
    return _key(dict(data=data["id"], config=config, iters=iters, batch=s.subnet_batch,
                     lr=s.subnet_lr, dropout=s.subnet_dropout, min_scale=s.min_scale,
                     lighting=s.lighting))


def truth_path(report_dir: str, key: str, aid: str, seed: int) -> str:
    return os.path.join(report_dir, "truth", key, f"{aid}-s{seed}.json")


def train_subnet(s: StudySettings, data: dict, cfg, arch, seed: int, iters: int,
                 opts: RunOptions, timing: Timing) -> dict:
    """Train one architecture from scratch once (cached as committed JSON)."""
    key = budget_key(s, data, cfg.to_dict(), iters)
    aid = arch_id(arch)
    path = truth_path(opts.report_dir, key, aid, seed)
    cached = _read_json(path)
    if cached is not None:
        return cached
    if opts.report_now:
        raise UserError(f"--report-now: training {aid} (seed {seed}, {iters} iterations) is "
                        f"not on record; the ground truth and the pilot must be complete")
    folder = os.path.join(opts.out, "truth", key)
    name = f"{aid}-s{seed}"
    cmd = [opts.python, os.path.join(REPO_ROOT, "retrain", "train_from_scratch.py"),
           "--train_dir", data["train"], "--test_dir", data["val"],
           "--model_id", " ".join(map(str, arch)), *s.space_flags(),
           "--classes", str(data["classes"]), "--total_iters", str(iters),
           "--batch_size", str(s.subnet_batch), "--learning_rate", str(s.subnet_lr),
           "--seed", str(seed), "--workers", str(opts.workers), "--save", name,
           "--report_freq", str(max(1, iters // 4)), "--eval-freq", str(iters),
           "--device", opts.device, "--dropout", str(s.subnet_dropout), *s.augment_flags()]
    sec = run_stage(f"subnet {name}", cmd, folder, os.path.join(folder, "logs", f"{name}.log"),
                    opts, timing, f"truth-{key}")
    with open(os.path.join(folder, f"eval-{name}", "result.json")) as f:
        r = json.load(f)
    if [int(v) for v in r["arch"]] != [int(v) for v in arch]:
        raise UserError(f"{folder}/eval-{name} is for another architecture; remove it")
    out = dict(arch=[int(v) for v in arch], seed=seed, iters=iters, batch=s.subnet_batch,
               lr=s.subnet_lr, top1=float(r["final_acc_top1"]),
               top5=float(r.get("final_acc_top5", float("nan"))),
               train_seconds=round(float(r.get("train_time", sec)), 1),
               wall_seconds=round(sec, 1), val_images=data["val_images"])
    if not math.isfinite(out["top5"]):
        out.pop("top5")
    files.write_json_atomic(out, path)
    # The checkpoints are not needed again: the JSON above is the result.
    for fname in ("checkpoint.pth.tar", "best.pth.tar"):
        p = os.path.join(folder, f"eval-{name}", fname)
        if os.path.exists(p):
            os.remove(p)
    opts.log(f"subnet {name} ({iters} iterations, seed {seed}): top-1 {out['top1']:.2f}% "
             f"in {sec:.0f}s")
    return out


def seed_agreement(per_seed: np.ndarray, resamples: int, seed: int) -> dict | None:
    """tau/rho between the first two training seeds: the ceiling for any predictor."""
    from utils.study.stats import bootstrap_indices, correlate
    if per_seed.shape[1] < 2 or per_seed.shape[0] < 3:
        return None
    st = correlate(per_seed[:, 0], per_seed[:, 1],
                   bootstrap_indices(len(per_seed), resamples, seed))
    return dict(between="seed 0 vs seed 1 top-1", tau=st["tau"], tau_ci=st["tau_ci"],
                rho=st["rho"], rho_ci=st["rho_ci"],
                mean_abs_diff=float(np.abs(per_seed[:, 0] - per_seed[:, 1]).mean()))


def _fmt_tau(agreement: dict | None) -> str:
    return "n/a" if not agreement or agreement["tau"] is None else f"{agreement['tau']:+.2f}"


def choose_budget(pilot: list[dict], target: float, trainings: int | None = None,
                  hours: float | None = None) -> tuple[int, str]:
    """The ground truth's training budget from the pilot.

    The cheapest budget whose seed-to-seed tau reaches `target`. If none does and the cost
    is known (`trainings` in the ground truth, each pilot entry's seconds_per_training and
    the number it already ran), the most repeatable budget (highest tau) whose remaining
    trainings fit in `hours`; if none fits, the cheapest. Without costs: the largest.
    """
    ok = [p for p in pilot if p["agreement"] and p["agreement"]["tau"] is not None
          and p["agreement"]["tau"] >= target]
    if ok:
        best = min(ok, key=lambda p: p["iters"])
        return best["iters"], (f"the cheapest pilot budget whose seed-to-seed tau "
                               f"({best['agreement']['tau']:+.2f}) reaches {target}")
    if trainings is None or hours is None or any("seconds_per_training" not in p for p in pilot):
        best = max(pilot, key=lambda p: p["iters"])
        return best["iters"], (f"no pilot budget reached seed-to-seed tau {target}: the "
                               f"largest tried")

    def hours_left(p):
        return max(0, trainings - int(p.get("trainings", 0))) * p["seconds_per_training"] / 3600

    measured = [p for p in pilot if p["agreement"] and p["agreement"]["tau"] is not None]
    fits = [p for p in measured if hours_left(p) <= hours]
    if fits:
        best = max(fits, key=lambda p: (p["agreement"]["tau"], -p["iters"]))
        return best["iters"], (
            f"no pilot budget reached seed-to-seed tau {target}; the most repeatable one "
            f"(tau {best['agreement']['tau']:+.2f}) whose remaining trainings fit in "
            f"--truth-hours {hours:g} (~{hours_left(best):.1f} h)")
    best = min(pilot, key=lambda p: p["iters"])
    return best["iters"], (f"no pilot budget reached seed-to-seed tau {target} and none "
                           f"fits in --truth-hours {hours:g}: the cheapest")


# ---- stage 5: supernets ---------------------------------------------------------------

def supernet_name(mode: str) -> str:
    return "spos" if mode == "spos" else f"bn-{mode}"


def supernet_key(s: StudySettings, data: dict, config: dict, mode: str) -> str:
    snaps = s.spos_snapshots if mode == "spos" else s.bn_snapshots
    lr = s.spos_lr if mode == "spos" else s.bn_lr
    return _key(dict(data=data["id"], config=config, mode=mode, iters=_ints(snaps, "x")[-1],
                     batch=s.supernet_batch, lr=lr, seed=s.seed, min_scale=s.min_scale,
                     lighting=s.lighting))


def spos_scores_key(s: StudySettings, data: dict, config: dict) -> str:
    return _key(dict(supernet=supernet_key(s, data, config, "spos"),
                     bn_batches=s.spos_bn_batches, batch=s.spos_batch,
                     val_images=s.spos_val_images))


def supernet_folder(report_dir: str, name: str, key: str) -> str:
    return os.path.join(report_dir, "supernets", f"{name}-{key}")


SNAPSHOT_KEYS = ("kind", "config", "state_dict", "train_all", "trainable", "iter", "epoch",
                 "seed", "total_iters", "steps_per_epoch", "args")


def _snapshot_record(path: str, it: int) -> dict:
    """What the study keeps of a snapshot: its indicator matrix (BN scores need nothing
    else) and the training loss of the iterations before it."""
    from utils.search.indicator import indicator_matrix
    from utils.spaces import get_space
    from utils.checkpoints.supernet import load_supernet
    sn = load_supernet(path)
    m = indicator_matrix(get_space(sn.config), sn.state_dict)
    return dict(iter=it, indicator=[[float(v) for v in row] for row in m])


def supernet_curve(metrics_path: str) -> list[dict]:
    """[(iteration, training loss, top-1)] of every report window of a supernet run."""
    rows: dict[int, dict] = {}
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if "loss" in rec and "step" in rec:
                    rows[int(rec["step"])] = dict(iter=int(rec["step"]),
                                                  loss=float(rec["loss"]),
                                                  top1=float(rec["top1"]))
    return [rows[k] for k in sorted(rows)]


def train_supernet(mode: str, s: StudySettings, data: dict, cfg, opts: RunOptions,
                   timing: Timing, spos_scoring: "SposScoring | None" = None) -> dict:
    """One supernet run with its snapshots; returns {name, key, snapshots, curve, ...}.

    Each snapshot's JSON record is written as it is reached; with every record present
    (and, for SPOS, every snapshot's scores), nothing is trained. `spos_scoring(path, it)`
    runs on each SPOS snapshot while its checkpoint exists.
    """
    name = supernet_name(mode)
    key = supernet_key(s, data, cfg.to_dict(), mode)
    folder = supernet_folder(opts.report_dir, name, key)
    snaps = _ints(s.spos_snapshots if mode == "spos" else s.bn_snapshots, "snapshots")
    total = snaps[-1]
    summary_path = os.path.join(folder, "supernet.json")
    def recorded(it: int) -> bool:
        return (os.path.exists(os.path.join(folder, f"iter_{it:06d}.json"))
                and (spos_scoring is None or spos_scoring.has(it)))

    summary = _read_json(summary_path)
    if summary is not None and summary.get("snapshots") == snaps and all(map(recorded, snaps)):
        return summary
    lr = s.spos_lr if mode == "spos" else s.bn_lr
    if opts.report_now:
        return _unfinished_supernet(name, mode, key, snaps, [it for it in snaps if recorded(it)],
                                    lr, s, opts, timing)
    work = os.path.join(opts.out, "supernets", f"{name}-{key}")
    live = os.path.join(work, "checkpoint.pth.tar")
    cmd = [opts.python, os.path.join(REPO_ROOT, "supernet", "main.py"),
           "--train_dir", data["train"], *s.space_flags(), "--classes", str(data["classes"]),
           "--batch_size", str(s.supernet_batch), "--learning_rate", str(lr),
           "--total_iters", str(total), "--seed", str(s.seed), "--workers", str(opts.workers),
           "--report_freq", str(max(1, min(snaps[0], 250) // 2)), "--checkpoint", live,
           "--device", opts.device, *s.augment_flags()]
    cmd += ["--train-all"] if mode == "spos" else ABLATIONS[mode]
    label = "SPOS (--train-all)" if mode == "spos" else f"BN-only ({mode})"
    for it in snaps:
        if recorded(it):
            continue
        # A slim copy of the weights at each snapshot (under --out, never committed), so
        # a snapshot can be scored again after the run has gone past it.
        snap = os.path.join(work, f"snapshot_{it:06d}.pth.tar")
        if not os.path.exists(snap):
            done = int(ckpt.load(live)["iter"]) if os.path.exists(live) else 0
            if done > it:
                raise UserError(f"{live} is at iteration {done}, past the snapshot at {it}, "
                                f"whose weights are gone: remove {work} to retrain this "
                                f"supernet")
            if done < it:
                opts.log(f"supernet {label}: iterations {done}..{it} of {total} ...")
                run_stage(f"supernet {label}", cmd + ["--stop-after", str(it - done)],
                          work, os.path.join(work, "stage.log"), opts, timing,
                          f"supernet-{name}-{key}")
            state = ckpt.load(live)
            ckpt.save_atomic({k: state[k] for k in SNAPSHOT_KEYS if k in state}, snap)
        record_path = os.path.join(folder, f"iter_{it:06d}.json")
        if not os.path.exists(record_path):
            files.write_json_atomic(_snapshot_record(snap, it), record_path)
        if spos_scoring is not None:
            spos_scoring(snap, it)
    from utils.train.meters import metrics_path_for
    summary = dict(name=name, mode=mode, key=key, snapshots=snaps, lr=lr,
                   batch=s.supernet_batch, flags=cmd[cmd.index("--device") + 2:],
                   curve=supernet_curve(metrics_path_for(live)),
                   seconds=round(timing.data.get(f"supernet-{name}-{key}", 0.0), 1))
    files.write_json_atomic(summary, summary_path)
    return summary


def _unfinished_supernet(name: str, mode: str, key: str, planned: list[int],
                         reached: list[int], lr: float, s: StudySettings, opts: RunOptions,
                         timing: Timing) -> dict:
    """--report-now: a supernet run short of its last snapshot, as far as it is on record.
    Its loss curve comes from the live run's metrics (on this machine) when they exist."""
    from utils.train.meters import metrics_path_for
    if not reached:
        raise UserError(f"--report-now: supernet {name} has no snapshot on record yet (its "
                        f"first is at iteration {planned[0]})")
    live = os.path.join(opts.out, "supernets", f"{name}-{key}", "checkpoint.pth.tar")
    progress_path = os.path.join(supernet_folder(opts.report_dir, name, key), "progress.json")
    if os.path.exists(live):
        done = int(ckpt.load(live)["iter"])
        curve = [r for r in supernet_curve(metrics_path_for(live)) if r["iter"] <= done]
        # committed, so a report on a fresh machine (no live run) shows the same curve
        files.write_json_atomic(dict(trained_iters=done, curve=curve), progress_path)
    else:
        progress = _read_json(progress_path) or dict(trained_iters=reached[-1], curve=[])
        done, curve = int(progress["trained_iters"]), progress["curve"]
    opts.log(f"supernet {name}: unfinished, reported at {len(reached)} of {len(planned)} "
             f"snapshots (trained {done} of {planned[-1]} iterations)")
    return dict(name=name, mode=mode, key=key, snapshots=reached, planned_snapshots=planned,
                finished=False, trained_iters=done, lr=lr, batch=s.supernet_batch,
                curve=curve,
                seconds=round(timing.data.get(f"supernet-{name}-{key}", 0.0), 1))


def final_loss(curve: list[dict], window: int = 4) -> float | None:
    """Mean training loss of the last `window` report windows (None before any)."""
    if not curve:
        return None
    return float(np.mean([r["loss"] for r in curve[-window:]]))


# ---- stage 6: predictors --------------------------------------------------------------

def bn_scores(report_dir: str, summary: dict, archs: np.ndarray) -> list[dict]:
    from utils.search.indicator import score
    folder = supernet_folder(report_dir, summary["name"], summary["key"])
    out = []
    for it in summary["snapshots"]:
        rec = _read_json(os.path.join(folder, f"iter_{it:06d}.json"))
        m = np.array(rec["indicator"], dtype=np.float64)
        t0 = time.perf_counter()
        values = score(m, archs)
        sec = (time.perf_counter() - t0) / len(archs)
        out.append(dict(iter=it, scores=[float(v) for v in values], seconds_per_candidate=sec))
    return out


class SposScoring:
    """SPOS accuracy of every architecture on the held-out split, per SPOS snapshot,
    cached as `<folder>/iter_<n>.json`."""

    def __init__(self, s: StudySettings, data: dict, archs: np.ndarray, opts: RunOptions,
                 timing: Timing, folder: str):
        self.s, self.data, self.archs, self.opts, self.timing = s, data, archs, opts, timing
        self.folder = folder

    def path(self, it: int) -> str:
        return os.path.join(self.folder, f"iter_{it:06d}.json")

    def has(self, it: int) -> bool:
        old = _read_json(self.path(it))
        return old is not None and old.get("archs") == self.archs.tolist()

    def __call__(self, checkpoint: str, it: int) -> None:
        if self.has(it):
            return
        import torch
        from utils.spaces import get_space
        from utils.search.spos import SposScorer
        from utils.checkpoints.supernet import load_supernet
        s, opts = self.s, self.opts
        torch.set_num_threads(opts.threads)
        t0 = time.perf_counter()
        sn = load_supernet(checkpoint)
        scorer = SposScorer(get_space(sn.config), sn.state_dict, self.data["train"],
                            self.data["holdout"], bn_batches=s.spos_bn_batches,
                            batch_size=s.spos_batch, val_images=s.spos_val_images,
                            device=opts.device, seed=s.seed, workers=0,
                            input_format=sn.input_format, log=lambda m: None,
                            class_names=sn.classes, resize_mode=sn.resize_mode,
                            source=f"supernet {checkpoint}", dataset=STUDY_DATASET)
        scores = [float(v) for v in scorer(self.archs)]
        sec = time.perf_counter() - t0
        self.timing.add("spos-scoring", sec)
        files.write_json_atomic(dict(iter=it, archs=self.archs.tolist(), scores=scores,
                                    seconds=round(sec, 2),
                                    seconds_per_candidate=sec / len(self.archs),
                                    bn_images=scorer.bn_batches * s.spos_batch,
                                    val_images=scorer.val_images, on="held-out split"),
                               self.path(it))
        opts.log(f"SPOS scoring at iteration {it}: {len(scores)} subnets in {sec:.0f}s")


def proxy_scores(s: StudySettings, data: dict, cfg, archs: np.ndarray,
                 opts: RunOptions) -> dict:
    """Zero-cost proxies of every architecture at a seeded init on one fixed batch."""
    path = os.path.join(opts.report_dir, "proxies.json")
    want = dict(archs=archs.tolist(), batch=s.proxy_batch, seed=s.seed, data=data["id"])
    old = _read_json(path)
    if old is not None and old.get("request") == want:
        return old
    import torch
    from utils.data.datasets import get_dataset
    from utils.data.loaders import prepare_batch
    from utils.spaces import get_space
    from utils.search.zero_cost import PROXIES
    torch.set_num_threads(opts.threads)
    # The study's data is an image folder (the PNG tree it writes, or --data): through
    # the registry, the same images and ImageNet normalisation as its committed results.
    spec = get_dataset(STUDY_DATASET)
    index = spec.index(data["train"], "train", "train split")
    rng = np.random.default_rng([s.seed, 7])
    pick = rng.choice(len(index.samples), size=min(s.proxy_batch, len(index.samples)),
                      replace=False)
    ds = spec.images(index.with_samples([index.samples[i] for i in pick]), cfg.input_size,
                     False)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    x, y = prepare_batch((images, labels), torch.device("cpu"), dataset=spec)
    space = get_space(cfg)
    scores = {name: [] for name in PROXIES}
    seconds = {name: 0.0 for name in PROXIES}
    for arch in archs:
        torch.manual_seed(s.seed)
        net = space.subnet(tuple(int(v) for v in arch), dropout=0.0)
        for name, fn in PROXIES.items():
            t0 = time.perf_counter()
            scores[name].append(float(fn(net, x, y)))
            seconds[name] += time.perf_counter() - t0
    out = dict(request=want, scores=scores,
               seconds_per_candidate={k: v / len(archs) for k, v in seconds.items()})
    files.write_json_atomic(out, path)
    return out


# ---- stage 7: statistics, conclusion, report --------------------------------------------

def runs_on_record(report_dir: str, used_truth: set[str], used_supernets: set[str],
                   resamples: int, seed: int) -> dict:
    """Results in the report folder that this report does not use: a pilot budget that
    was dropped part-way, a supernet that was stopped (its `stopped.json` says why). They
    stay committed and listed, so the report shows everything the study spent."""
    trainings = []
    truth_dir = os.path.join(report_dir, "truth")
    for key in sorted(os.listdir(truth_dir)) if os.path.isdir(truth_dir) else []:
        if key in used_truth or not os.path.isdir(os.path.join(truth_dir, key)):
            continue
        runs = [_read_json(os.path.join(truth_dir, key, n))
                for n in sorted(os.listdir(os.path.join(truth_dir, key))) if n.endswith(".json")]
        if not runs:
            continue
        by_arch: dict[str, dict[int, float]] = {}
        for r in runs:
            by_arch.setdefault(arch_id(r["arch"]), {})[int(r["seed"])] = float(r["top1"])
        seeds = sorted({int(r["seed"]) for r in runs})
        pairs = np.array([[v[sd] for sd in seeds[:2]] for v in by_arch.values()
                          if all(sd in v for sd in seeds[:2])]) if len(seeds) >= 2 else \
            np.zeros((0, 2))
        per_seed = {str(sd): [r["top1"] for r in runs if int(r["seed"]) == sd] for sd in seeds}
        trainings.append(dict(
            key=key, iters=sorted({int(r["iters"]) for r in runs}), trainings=len(runs),
            subnets=len(by_arch), seeds=seeds,
            top1_by_seed={sd: dict(min=min(v), max=max(v), mean=float(np.mean(v)), n=len(v))
                          for sd, v in per_seed.items()},
            seconds_per_training=float(np.mean([r["train_seconds"] for r in runs])),
            agreement=seed_agreement(pairs, resamples, seed) if len(pairs) else None))
    stopped = []
    sup_dir = os.path.join(report_dir, "supernets")
    for name in sorted(os.listdir(sup_dir)) if os.path.isdir(sup_dir) else []:
        rec = _read_json(os.path.join(sup_dir, name, "stopped.json"))
        if rec is not None and name not in used_supernets:
            stopped.append(dict(folder=name, **rec))
    return dict(trainings=trainings, supernets=stopped)


def rank_statistics(truth: np.ndarray, predictors: dict[str, dict], resamples: int,
                    seed: int, level: float = 0.95) -> dict[str, dict]:
    """tau/rho with intervals for each predictor, plus tau minus the FLOPs baseline's."""
    from utils.study.stats import bootstrap_indices, correlate, paired_difference
    idx = bootstrap_indices(len(truth), resamples, seed)
    stats = {name: correlate(p["scores"], truth, idx, level) for name, p in predictors.items()}
    base = stats.get("flops")
    out = {}
    for name, p in predictors.items():
        st = stats[name]
        entry = dict(tau=st["tau"], tau_ci=st["tau_ci"], rho=st["rho"], rho_ci=st["rho_ci"],
                     resamples_used=st["resamples_used"])
        if base is not None and name != "flops":
            entry["tau_minus_flops"] = paired_difference(st["tau_boot"], base["tau_boot"],
                                                         st["tau"], base["tau"], level)
        out[name] = entry
    return out


# The rule, fixed before the run (docs/ranking_study.md quotes it):
RULE = ("Preconditions: the ground truth's seed-to-seed Kendall tau is at least the target "
        "(0.6), and every supernet used for scoring ends with a training loss at least 0.3 "
        "below ln(classes). The BN indicator (the original trainable set, last snapshot) "
        "'works' in a stratum if the lower bound of its 95% tau interval is above 0 and its "
        "tau is at least that of FLOPs and of params; it 'does not beat the simple "
        "baselines' if the upper bound of its interval is below the larger of the FLOPs "
        "and params taus; otherwise the question stays open in that stratum.")


def conclude(stratum_stats: dict, bn_name: str, preconditions: list[str]) -> dict:
    """The verdict in one stratum by RULE."""
    bn = stratum_stats.get(bn_name)
    flops, params = stratum_stats["flops"]["tau"], stratum_stats["params"]["tau"]
    base = max(v for v in (flops, params) if v is not None) if (
        flops is not None or params is not None) else None
    if bn is None or bn["tau"] is None or base is None:
        return dict(verdict="open", why="not enough data for the indicator or the baselines")
    lo, hi = bn["tau_ci"]
    if lo is not None and lo > 0 and bn["tau"] >= base:
        verdict, why = "works", (f"tau {bn['tau']:+.2f}, interval [{lo:+.2f}, {hi:+.2f}] above "
                                 f"0 and at least FLOPs ({flops:+.2f}) and params "
                                 f"({params:+.2f})")
    elif hi is not None and hi < base:
        verdict, why = "does not beat the simple baselines", (
            f"interval [{lo:+.2f}, {hi:+.2f}] below the better baseline's tau {base:+.2f}")
    else:
        verdict, why = "open", (f"tau {bn['tau']:+.2f} [{lo:+.2f}, {hi:+.2f}] vs FLOPs "
                                f"{flops:+.2f} and params {params:+.2f}: neither condition holds")
    if preconditions:
        why += "; but the study is not conclusive: " + "; ".join(preconditions)
        verdict = f"{verdict} (inconclusive)"
    return dict(verdict=verdict, why=why)


def run_study(s: StudySettings, opts: RunOptions) -> dict:
    """Run (or resume) every stage and write ranking.json + plots; returns the report."""
    from utils.spaces import make_config, parse_skips
    s.check()
    t_start = time.perf_counter()
    _STOP.clear()
    opts.out = os.path.abspath(opts.out)
    opts.report_dir = os.path.abspath(opts.report_dir)
    os.makedirs(opts.out, exist_ok=True)
    os.makedirs(opts.report_dir, exist_ok=True)
    timing = Timing(os.path.join(opts.report_dir, "timing.json"))
    log = opts.log

    data = prepare_data(s, opts, timing)
    log(f"data: {data['root']} ({data['source']}): train split {data['train_images']}, "
        f"held-out {data['holdout_images']}, test {data['val_images']} images, "
        f"{data['classes']} classes")
    cfg = make_config(s.space, fixed_skips=parse_skips(s.fixed_skips), input_size=s.input_size,
                      width_mult=s.width_mult, classes=data["classes"],
                      stem_stride=s.stem_stride)
    log(f"space: {cfg.describe()}")
    archs = sample_archs(s, cfg, opts.report_dir)
    a = np.array(archs["archs"], dtype=np.int64)
    n = len(a)
    log(f"{n} architectures from {min(archs['flops']) / 1e6:.2f}M to "
        f"{max(archs['flops']) / 1e6:.2f}M FLOPs (limit {archs['flops_limit'] / 1e6:.2f}M; "
        f"{archs['stratum'].count('under_limit')} under it); pilot: {len(archs['pilot'])}")
    seeds = [s.seed + r for r in range(s.truth_seeds)]
    budgets = _ints(s.pilot_budgets, "pilot-budgets")
    modes = ["indicator", *[m for m in s.ablation_list() if m != "indicator"]]
    spos_folder = os.path.join(opts.report_dir, "spos_scores",
                               spos_scores_key(s, data, cfg.to_dict()))
    spos_scoring = SposScoring(s, data, a, opts, timing, spos_folder)

    pool = ThreadPoolExecutor(max_workers=max(1, opts.parallel))
    futures = []

    def submit(fn, *args):
        f = pool.submit(fn, *args)
        futures.append(f)
        return f

    try:
        # Priority by submission order: the pilot's first budget, then the BN-only supernet
        # (whether it leaves chance is the other precondition), then the rest of the pilot
        # (it decides the ground truth's budget), then the SPOS supernet (it does not depend
        # on the budget), then the ground truth, then the ablation supernets.
        tried = [s.subnet_iters] if s.subnet_iters else budgets
        pilot_jobs, sup_jobs = {}, {}
        for j, b in enumerate(tried):
            for sd in seeds:
                for k in archs["pilot"]:
                    pilot_jobs[(b, k, sd)] = submit(train_subnet, s, data, cfg,
                                                    archs["archs"][k], sd, b, opts, timing)
            if j == 0:
                sup_jobs["indicator"] = submit(train_supernet, "indicator", s, data, cfg, opts,
                                               timing)
        sup_jobs["spos"] = submit(train_supernet, "spos", s, data, cfg, opts, timing,
                                  spos_scoring)
        pilot = []
        for b in ([s.subnet_iters] if s.subnet_iters else budgets):
            per_seed = np.array([[pilot_jobs[(b, k, sd)].result()["top1"] for sd in seeds]
                                 for k in archs["pilot"]])
            cost = sum(pilot_jobs[(b, k, sd)].result()["train_seconds"]
                       for k in archs["pilot"] for sd in seeds)
            pilot.append(dict(iters=b, images=b * s.subnet_batch,
                              agreement=seed_agreement(per_seed, opts.bootstrap, s.seed),
                              mean_top1=float(per_seed.mean()),
                              seconds_per_training=cost / per_seed.size,
                              subnets=len(archs["pilot"]), trainings=int(per_seed.size)))
            log(f"pilot at {b} iterations: seed-to-seed tau "
                f"{_fmt_tau(pilot[-1]['agreement'])}, mean top-1 "
                f"{per_seed.mean():.2f}%, {pilot[-1]['seconds_per_training']:.0f}s a training")
        if s.subnet_iters:
            iters, why = s.subnet_iters, "--subnet-iters"
        else:
            iters, why = choose_budget(pilot, s.tau_target, trainings=n * len(seeds),
                                       hours=s.truth_hours)
        log(f"ground-truth budget: {iters} iterations ({why})")
        truth_jobs = {(k, sd): submit(train_subnet, s, data, cfg, archs["archs"][k], sd,
                                      iters, opts, timing)
                      for sd in seeds for k in range(n)}
        # The ablations last: the report needs the ground truth, and an ablation is the one
        # part that --report-now can report unfinished.
        for m in modes[1:]:
            sup_jobs[m] = submit(train_supernet, m, s, data, cfg, opts, timing)
        for f in futures:
            f.result()
    except BaseException as e:
        if not isinstance(e, StudyStopped):
            stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, StudyStopped):
            raise KeyboardInterrupt from None
        raise
    pool.shutdown(wait=True)

    per_seed = np.array([[truth_jobs[(k, sd)].result()["top1"] for sd in seeds]
                         for k in range(n)])
    truth = per_seed.mean(axis=1)
    truth_seconds = float(np.mean([truth_jobs[(k, sd)].result()["train_seconds"]
                                   for k in range(n) for sd in seeds]))
    supernets = {m: f.result() for m, f in sup_jobs.items()}

    predictors: dict[str, dict] = {}
    for m in modes:
        for e in bn_scores(opts.report_dir, supernets[m], a):
            predictors[f"bn_indicator[{m}]@{e['iter']}"] = dict(
                family=f"bn_indicator[{m}]", iter=e["iter"], scores=e["scores"],
                seconds_per_candidate=e["seconds_per_candidate"])
    spos_bn = bn_scores(opts.report_dir, supernets["spos"], a)[-1]
    predictors[f"bn_indicator[spos supernet]@{spos_bn['iter']}"] = dict(
        family="bn_indicator[spos supernet]", iter=spos_bn["iter"], scores=spos_bn["scores"],
        seconds_per_candidate=spos_bn["seconds_per_candidate"])
    for it in supernets["spos"]["snapshots"]:
        rec = _read_json(os.path.join(spos_folder, f"iter_{it:06d}.json"))
        predictors[f"spos_accuracy@{it}"] = dict(
            family="spos_accuracy", iter=it, scores=rec["scores"],
            seconds_per_candidate=rec["seconds_per_candidate"])
    proxies = proxy_scores(s, data, cfg, a, opts)
    for name, values in proxies["scores"].items():
        predictors[name] = dict(family=name, scores=values,
                                seconds_per_candidate=proxies["seconds_per_candidate"][name])
    from utils.flops.table import load_table
    table = load_table(cfg)
    t0 = time.perf_counter()
    table.flops_of(a)
    lookup = (time.perf_counter() - t0) / n
    predictors["flops"] = dict(family="flops", scores=[float(v) for v in archs["flops"]],
                               seconds_per_candidate=lookup)
    predictors["params"] = dict(family="params", scores=[float(v) for v in archs["params"]],
                                seconds_per_candidate=lookup)
    rng = np.random.default_rng(s.seed + 12345)
    predictors["random"] = dict(family="random", scores=[float(v) for v in rng.random(n)],
                                seconds_per_candidate=0.0)

    strata_idx = {"all": np.arange(n),
                  "under_limit": np.array([k for k in range(n)
                                           if archs["stratum"][k] == "under_limit"])}
    stats = {}
    for st_name, idx in strata_idx.items():
        if len(idx) < 3:
            continue
        sub = {k: dict(v, scores=[v["scores"][i] for i in idx]) for k, v in predictors.items()}
        stats[st_name] = dict(
            subnets=len(idx),
            ground_truth_agreement=seed_agreement(per_seed[idx], opts.bootstrap, s.seed),
            predictors=rank_statistics(truth[idx], sub, opts.bootstrap, s.seed),
            null_tau_sd=math.sqrt(2 * (2 * len(idx) + 5) / (9 * len(idx) * (len(idx) - 1))))

    chance = math.log(data["classes"])
    losses = {m: final_loss(sv["curve"]) for m, sv in supernets.items()}
    pre = []
    ag = stats["all"]["ground_truth_agreement"]
    if ag is None or ag["tau"] is None or ag["tau"] < s.tau_target:
        pre.append(f"the ground truth's seed-to-seed tau is {_fmt_tau(ag)} (< {s.tau_target})")
    for m, loss in losses.items():
        if loss is None or loss > chance - 0.3:
            pre.append(f"supernet {supernet_name(m)} ended at training loss "
                       f"{'n/a' if loss is None else format(loss, '.3f')} "
                       f"(> ln({data['classes']}) - 0.3 = {chance - 0.3:.3f})")
    bn_final = f"bn_indicator[indicator]@{supernets['indicator']['snapshots'][-1]}"
    conclusion = dict(rule=RULE, predictor=bn_final, preconditions_failed=pre,
                      strata={k: conclude(v["predictors"], bn_final, pre)
                              for k, v in stats.items()})

    curves = {}
    for st_name, st in stats.items():
        curves[st_name] = {
            fam: [dict(iter=p["iter"], **{k: st["predictors"][name][k]
                                          for k in ("tau", "tau_ci", "rho", "rho_ci")})
                  for name, p in predictors.items() if p["family"] == fam]
            for fam in sorted({p["family"] for p in predictors.values() if "iter" in p})}
    subnets = [dict(id=archs["ids"][k], arch=archs["archs"][k],
                    arch_str=" ".join(map(str, archs["archs"][k])), flops=archs["flops"][k],
                    params=archs["params"][k], stratum=archs["stratum"][k],
                    pilot=k in archs["pilot"], top1=float(truth[k]),
                    top1_per_seed=[float(v) for v in per_seed[k]])
               for k in range(n)]
    report = dict(
        version=VERSION, settings=dataclasses.asdict(s), config=cfg.to_dict(),
        config_text=cfg.describe(), flops_limit=archs["flops_limit"],
        flops_limit_rule=archs["flops_limit_rule"],
        data={k: data[k] for k in ("source", "train_images", "holdout_images", "val_images",
                                   "classes")},
        pilot=dict(budgets=pilot, chosen_iters=iters, why=why, target=s.tau_target),
        ground_truth=dict(metric="test-set top-1 (%) after training from scratch on the "
                                 "train split, mean over the training seeds",
                          seeds=seeds, iters=iters, batch=s.subnet_batch, lr=s.subnet_lr,
                          dropout=s.subnet_dropout, min_scale=s.min_scale,
                          lighting=s.lighting, seconds_per_training=truth_seconds,
                          agreement=stats["all"]["ground_truth_agreement"],
                          min=float(truth.min()), max=float(truth.max()),
                          mean=float(truth.mean()), std=float(truth.std())),
        supernets={supernet_name(m): dict(mode=m, snapshots=sv["snapshots"], lr=sv["lr"],
                                          finished=sv.get("finished", True),
                                          planned_snapshots=sv.get("planned_snapshots",
                                                                   sv["snapshots"]),
                                          trained_iters=sv.get("trained_iters",
                                                               sv["snapshots"][-1]),
                                          batch=sv["batch"], final_loss=losses[m],
                                          chance_loss=chance, curve=sv["curve"],
                                          seconds=sv["seconds"])
                   for m, sv in supernets.items()},
        bootstrap=dict(resamples=opts.bootstrap, level=0.95, seed=s.seed,
                       method="percentile; subnets resampled with replacement; the same "
                              "resamples for every predictor"),
        subnets=subnets,
        predictor_scores={k: v for k, v in predictors.items()},
        strata=stats, curves=curves, conclusion=conclusion,
        timing=dict(stage_seconds={k: round(v, 1) for k, v in timing.data.items()},
                    total_seconds=round(sum(timing.data.values()), 1),
                    this_invocation_seconds=None, parallel=opts.parallel,
                    threads=opts.threads),
    )
    report["not_used"] = runs_on_record(
        opts.report_dir, {budget_key(s, data, cfg.to_dict(), b)
                          for b in {*([s.subnet_iters] if s.subnet_iters else budgets), iters}},
        {f"{sv['name']}-{sv['key']}" for sv in supernets.values()}, opts.bootstrap, s.seed)
    from utils.plots.figures import plot_ranking
    report["plots"] = [os.path.basename(p) for p in plot_ranking(report, opts.report_dir)]
    report["timing"]["this_invocation_seconds"] = round(time.perf_counter() - t_start, 1)
    files.write_json_atomic(report, os.path.join(opts.report_dir, "ranking.json"))
    return report


def summary_lines(report: dict, stratum: str = "all") -> list[str]:
    """One line per predictor of a stratum: tau [CI], rho [CI], seconds per candidate."""
    def f(v):
        return "  n/a" if v is None else f"{v:+.3f}"

    def ci(c):
        return "[  n/a,   n/a]" if c[0] is None else f"[{c[0]:+.2f}, {c[1]:+.2f}]"

    st = report["strata"][stratum]
    lines = [f"stratum {stratum} ({st['subnets']} subnets)",
             f"{'predictor':<40} {'tau':>7} {'95% CI':>14}  {'rho':>7} {'95% CI':>14}  "
             f"{'s/candidate':>11}"]
    for name, p in st["predictors"].items():
        sec = report["predictor_scores"][name].get("seconds_per_candidate")
        lines.append(f"{name:<40} {f(p['tau']):>7} {ci(p['tau_ci']):>14}  {f(p['rho']):>7} "
                     f"{ci(p['rho_ci']):>14}  {'' if sec is None else f'{sec:.2e}':>11}")
    return lines
