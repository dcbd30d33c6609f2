"""The ranking study behind tools/ranking_study.py: does the BN indicator rank subnets right?

Stages, each cached under the study folder so that rerunning the same command resumes.
Every stage's folder is named after a key of exactly the settings its results depend on
(`stage_keys`): changing, say, the supernet LR trains new supernets but reuses the
subnets already trained from scratch, and never mixes results of different settings.

1. data      - an ImageFolder (`--data`), or Fashion-MNIST written by utils/demo_data.py
               (the full Debian dataset when installed, else the committed slice);
2. supernets - supernet/main.py twice, BN-only (BN-NAS) and --train-all (SPOS), one
               invocation per epoch (`--stop-after` one epoch's iterations), so the
               weights at every epoch end are kept as slim snapshots;
3. subnets   - N architectures spread over the FLOPs range under the search limit
               (utils.arch_sampling), each trained from scratch with
               retrain/train_from_scratch.py on the same short budget; its final
               validation top-1 is the ground truth (eval-<id>/result.json is the cache);
4. scores    - the BN indicator of every BN-only snapshot (utils.indicator), SPOS accuracy
               (utils.spos_score: BN recalibration + fixed validation subset) of every SPOS
               snapshot, FLOPs, parameters and a seeded random score;
5. report    - Kendall tau and Spearman rho of each against the ground truth with
               bootstrap intervals (utils.ranking), ranking.json and the plots.

The stages are driven through their command lines in child processes (each with its own
log in its stage folder), so this module depends only on their documented flags.
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
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from utils import checkpoint as ckpt
from utils.cli import REPO_ROOT, UserError

VERSION = 1


@dataclass
class StudySettings:
    """Everything that decides the study's numbers (a resumed study must match them)."""

    # space (mobilenet 32x32, width 0.5, stem stride 2: small enough for a CPU)
    space: str = "mobilenet"
    input_size: int = 32
    width_mult: float = 0.5
    stem_stride: int = 2
    fixed_skips: str | None = None  # None: the space's default
    # data
    data: str | None = None  # an ImageFolder root with train/ and val/; None: demo_data
    source: str = "auto"  # auto = debian when installed, else slice
    train_per_class: int | None = 300
    val_per_class: int | None = 200
    # augmentation of both training stages: the demo's (SPEC 5's area 0.08 crop and PCA
    # lighting leave a 28-pixel garment unrecognisable and kept every stage near chance)
    min_scale: float = 0.85
    lighting: float = 0.0
    # supernets
    bn_epochs: int = 24  # cheap (BN-only): a long tau-vs-epoch curve
    spos_epochs: int = 6
    supernet_batch: int = 64
    # BN-only: the reference LR (SPEC 5) - only BN affine parameters move, and they must
    # move for the indicator to say anything. SPOS (all weights) at batch 64: 0.25 diverges
    # here (loss 5.9 in the first epoch), so a smaller one.
    bn_lr: float = 0.25
    spos_lr: float = 0.05
    # ground truth
    subnets: int = 30
    subnet_epochs: int = 4
    subnet_batch: int = 64
    subnet_lr: float = 0.25
    subnet_dropout: float = 0.0
    truth_seeds: int = 2  # trainings per subnet: ground truth = mean top-1 over them
    flops_limit: float | None = None  # MFLOPs; None: utils.search_limits default
    # SPOS scoring
    spos_bn_batches: int = 5
    spos_batch: int = 64
    spos_val_images: int = 1000
    seed: int = 0

    def check(self) -> None:
        for name in ("bn_epochs", "spos_epochs", "supernet_batch", "subnets", "subnet_epochs",
                     "subnet_batch", "truth_seeds", "spos_bn_batches", "spos_batch",
                     "spos_val_images"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(self, name)}")
        if self.subnets < 3:
            raise UserError(f"--subnets must be >= 3 for a rank correlation, got {self.subnets}")
        if not 0.0 < self.min_scale <= 1.0:
            raise UserError(f"--min-scale must be in (0, 1], got {self.min_scale}")
        if self.lighting < 0:
            raise UserError(f"--lighting must be >= 0, got {self.lighting}")
        if not 0.0 <= self.subnet_dropout < 1.0:
            raise UserError(f"--subnet-dropout must be in [0, 1), got {self.subnet_dropout}")
        if self.source not in ("auto", "slice", "debian"):
            raise UserError(f"--source must be auto, slice or debian, got {self.source}")

    def space_flags(self) -> list[str]:
        flags = ["--space", self.space, "--input-size", str(self.input_size),
                 "--width-mult", str(self.width_mult), "--stem-stride", str(self.stem_stride)]
        if self.fixed_skips is not None:
            flags += ["--fixed-skips", self.fixed_skips]
        return flags

    def augment_flags(self) -> list[str]:
        return ["--min-scale", str(self.min_scale), "--lighting", str(self.lighting)]


@dataclass
class RunOptions:
    """How the study runs (not what it computes): free to change between resumes."""

    out: str
    report_dir: str
    threads: int = 2
    workers: int = 1
    bootstrap: int = 2000
    device: str = "cpu"  # for every stage: cpu, cuda or auto
    python: str = sys.executable
    log: Callable[[str], None] = print


# ---- small helpers -------------------------------------------------------------------

def _child_env(opts: "RunOptions") -> dict:
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


def run_stage(name: str, cmd: list[str], cwd: str, log_path: str, opts: RunOptions) -> float:
    """Run one stage's CLI with its output appended to `log_path`; seconds taken."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as f:
        f.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(opts), stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait()
        except BaseException:
            stop_gracefully(proc)
            raise
    if rc != 0:
        raise UserError(f"{name} failed (exit code {rc}): {_last_error(log_path)} "
                        f"(full log: {log_path})")
    return time.perf_counter() - t0


def stop_gracefully(proc: subprocess.Popen, first_wait: float = 5.0) -> None:
    """Let an interrupted stage save its checkpoint and exit (it does on SIGINT/SIGTERM).

    A Ctrl-C reaches the stage too; a signal sent to this process alone does not, so the
    stage gets one SIGTERM after a short wait (a second signal would kill it unsaved).
    """
    for sig, wait in ((None, first_wait), (signal.SIGTERM, 300.0)):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


class Timing:
    """Seconds spent per stage, accumulated over resumed invocations (<out>/timing.json)."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict[str, float] = {}
        if os.path.exists(path):
            with open(path) as f:
                self.data = {k: float(v) for k, v in json.load(f).items()}

    def add(self, key: str, seconds: float) -> None:
        self.data[key] = self.data.get(key, 0.0) + seconds
        ckpt.write_json_atomic(self.data, self.path)


def _key(obj: dict) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def stage_keys(s: StudySettings, data_id: dict, config: dict) -> dict[str, str]:
    """Folder name of each stage: its kind plus a key of what its results depend on."""
    base = dict(data=data_id, config=config, seed=s.seed)
    aug = dict(min_scale=s.min_scale, lighting=s.lighting)
    sup = {mode: _key(dict(base, mode=mode, epochs=epochs, batch=s.supernet_batch, lr=lr,
                           **aug))
           for mode, epochs, lr in (("bn", s.bn_epochs, s.bn_lr),
                                    ("spos", s.spos_epochs, s.spos_lr))}
    sub = _key(dict(base, n=s.subnets, epochs=s.subnet_epochs, batch=s.subnet_batch,
                    lr=s.subnet_lr, flops_limit=s.flops_limit, dropout=s.subnet_dropout, **aug))
    scores = _key(dict(supernet=sup["spos"], subnets=sub, bn_batches=s.spos_bn_batches,
                       batch=s.spos_batch, val_images=s.spos_val_images))
    return {"supernet_bn": f"supernet_bn-{sup['bn']}",
            "supernet_spos": f"supernet_spos-{sup['spos']}",
            "subnets": f"subnets-{sub}", "spos_scores": f"spos_scores-{scores}"}


def _mark(folder: str, what: dict) -> None:
    """settings.json in a stage folder: what its key stands for (for people, not code)."""
    path = os.path.join(folder, "settings.json")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        ckpt.write_json_atomic(what, path)


# ---- stage 1: data --------------------------------------------------------------------

def debian_available() -> bool:
    from utils import demo_data
    d = os.environ.get(demo_data.DEBIAN_DIR_ENV) or str(demo_data.DEBIAN_DIR)
    return all(any(os.path.isfile(os.path.join(d, stem + ext)) for ext in (".gz", ""))
               for pair in demo_data.IDX_FILES.values() for stem in pair)


def prepare_data(s: StudySettings, opts: RunOptions, timing: Timing) -> dict:
    """{root, train, val, source, train_images, val_images, classes}."""
    from utils.data import scan_image_folder
    if s.data:
        root, source = os.path.abspath(s.data), "given"
    else:
        from utils import demo_data
        source = s.source
        if source == "auto":
            source = "debian" if debian_available() else "slice"
        root = os.path.join(opts.out, "data")
        t0 = time.perf_counter()
        try:
            summary = demo_data.write_tree(root, size=s.input_size,
                                           train_per_class=s.train_per_class,
                                           val_per_class=s.val_per_class, source=source,
                                           seed=s.seed)
        except demo_data.DemoDataError as e:
            raise UserError(str(e)) from None
        if not summary.get("skipped"):
            timing.add("data", time.perf_counter() - t0)
    train = scan_image_folder(os.path.join(root, "train"), "train/ of the study data")
    val = scan_image_folder(os.path.join(root, "val"), "val/ of the study data")
    ident = dict(root=root) if s.data else dict(
        source=source, train_per_class=s.train_per_class, val_per_class=s.val_per_class,
        size=s.input_size, seed=s.seed)
    return dict(root=root, train=os.path.join(root, "train"), val=os.path.join(root, "val"),
                source=source, train_images=len(train.samples), val_images=len(val.samples),
                classes=len(train.classes), id=ident)


# ---- stage 2: supernets -------------------------------------------------------------

SNAPSHOT_KEYS = ("kind", "config", "state_dict", "train_all", "iter", "epoch", "seed",
                 "total_iters", "steps_per_epoch")


def train_supernet(mode: str, s: StudySettings, data: dict, opts: RunOptions,
                   timing: Timing, name: str) -> list[tuple[int, str]]:
    """Train the `mode` ("bn" or "spos") supernet epoch by epoch; [(epoch, snapshot)]."""
    epochs, lr = (s.bn_epochs, s.bn_lr) if mode == "bn" else (s.spos_epochs, s.spos_lr)
    folder = os.path.join(opts.out, name)
    _mark(folder, dict(mode=mode, data=data["id"], space_flags=s.space_flags(), seed=s.seed,
                       epochs=epochs, batch=s.supernet_batch, lr=lr, min_scale=s.min_scale,
                       lighting=s.lighting))
    live = os.path.join(folder, "checkpoint.pth.tar")
    spe = data["train_images"] // s.supernet_batch
    if spe < 1:
        raise UserError(f"--supernet-batch {s.supernet_batch} is larger than the "
                        f"{data['train_images']} training images")
    cmd = [opts.python, os.path.join(REPO_ROOT, "supernet", "main.py"),
           "--train_dir", data["train"], *s.space_flags(), "--batch_size", str(s.supernet_batch),
           "--learning_rate", str(lr), "--epochs", str(epochs), "--seed", str(s.seed),
           "--workers", str(opts.workers), "--report_freq", str(max(1, spe // 4)),
           "--checkpoint", live, "--device", opts.device, *s.augment_flags()]
    if mode == "spos":
        cmd.append("--train-all")
    label = "BN-only (BN-NAS)" if mode == "bn" else "SPOS (--train-all)"
    out = []
    for epoch in range(1, epochs + 1):
        snap = os.path.join(folder, f"epoch_{epoch:03d}.pth.tar")
        if not os.path.exists(snap):
            done = int(ckpt.load(live)["iter"]) if os.path.exists(live) else 0
            if done < epoch * spe:
                opts.log(f"supernet {label}: epoch {epoch}/{epochs} ({spe} iterations) ...")
                sec = run_stage(f"supernet {label} epoch {epoch}",
                                cmd + ["--stop-after", str(epoch * spe - done)], opts.out,
                                os.path.join(folder, "stage.log"), opts)
                timing.add(name, sec)
                opts.log(f"supernet {label}: epoch {epoch} done in {sec:.0f}s")
            state = ckpt.load(live)
            if int(state["iter"]) != epoch * spe:
                # Only possible if the live checkpoint ran past an epoch we did not keep.
                raise UserError(f"{live} is at iteration {state['iter']}, not at the end of "
                                f"epoch {epoch} ({epoch * spe}); remove {folder} to retrain "
                                f"this supernet")
            slim = {k: state[k] for k in SNAPSHOT_KEYS if k in state}
            slim["args"] = {k: v for k, v in (state.get("args") or {}).items()
                            if k in ("input_format", "train_all", "seed")}
            ckpt.save_atomic(slim, snap)
        out.append((epoch, snap))
    return out


def supernet_curve(folder: str) -> list[dict]:
    """Training loss and top-1 of each epoch, from the stage's metrics log (last record of
    an epoch wins: a resumed epoch logs again)."""
    from utils.engine import metrics_path_for
    path = metrics_path_for(os.path.join(folder, "checkpoint.pth.tar"))
    by_epoch: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if "epoch_loss" in rec:
                    by_epoch[int(rec["epoch"]) + 1] = dict(
                        epoch=int(rec["epoch"]) + 1, train_loss=float(rec["epoch_loss"]),
                        train_top1=float(rec["epoch_top1"]))
    return [by_epoch[e] for e in sorted(by_epoch)]


# ---- stage 3: architectures and ground truth -------------------------------------

def sample_archs(s: StudySettings, cfg, folder: str) -> dict:
    """The study's architectures (fixed once written): {archs, flops, params, limit...}."""
    from utils.arch_sampling import stratified_by_flops
    from utils.flops import load_table
    from utils.search_limits import default_flops_limit
    from utils.spaces import get_space
    path = os.path.join(folder, "archs.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    space, table = get_space(cfg), load_table(cfg)
    if s.flops_limit is None:
        limit_m, rule = default_flops_limit(cfg)
    else:
        limit_m, rule = float(s.flops_limit), "--flops-limit"
    try:
        archs = stratified_by_flops(space, table, s.subnets, limit_m * 1e6, s.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    a = np.array(archs, dtype=np.int64)
    obj = dict(archs=[list(x) for x in archs], flops=[int(v) for v in table.flops_of(a)],
               params=[int(v) for v in table.params_of(a)], flops_limit=limit_m * 1e6,
               flops_limit_rule=rule, config=cfg.to_dict())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ckpt.write_json_atomic(obj, path)
    return obj


def subnet_name(k: int, rep: int = 0) -> str:
    """Run name of subnet k's training number `rep` (seed = --seed + rep)."""
    return f"sub_{k:02d}" if rep == 0 else f"sub_{k:02d}-s{rep}"


def train_subnets(s: StudySettings, data: dict, archs: dict, opts: RunOptions,
                  timing: Timing, folder: str) -> list[dict]:
    """Train every architecture from scratch, `truth_seeds` times each (cached).

    Returns per subnet {top1 (mean over seeds), top1_per_seed, iters, train_time}.
    """
    spe = data["train_images"] // s.subnet_batch
    if spe < 1:
        raise UserError(f"--subnet-batch {s.subnet_batch} is larger than the "
                        f"{data['train_images']} training images")
    total = spe * s.subnet_epochs
    n = len(archs["archs"])
    runs: list[list[dict]] = [[] for _ in range(n)]
    # Seed by seed, so a study stopped half-way already has one complete ground truth.
    for rep in range(s.truth_seeds):
        for k, arch in enumerate(archs["archs"]):
            name = subnet_name(k, rep)
            result_path = os.path.join(folder, f"eval-{name}", "result.json")
            if not os.path.exists(result_path):
                cmd = [opts.python, os.path.join(REPO_ROOT, "retrain", "train_from_scratch.py"),
                       "--train_dir", data["train"], "--test_dir", data["val"],
                       "--model_id", " ".join(map(str, arch)), *s.space_flags(),
                       "--classes", str(data["classes"]), "--epochs", str(s.subnet_epochs),
                       "--batch_size", str(s.subnet_batch), "--learning_rate", str(s.subnet_lr),
                       "--seed", str(s.seed + rep), "--workers", str(opts.workers),
                       "--save", name, "--report_freq", str(max(1, spe // 2)),
                       "--eval-freq", str(total), "--device", opts.device,
                       "--dropout", str(s.subnet_dropout), *s.augment_flags()]
                sec = run_stage(f"subnet {name}", cmd, folder,
                                os.path.join(folder, "logs", f"{name}.log"), opts)
                timing.add(os.path.basename(folder), sec)
            else:
                sec = None
            with open(result_path) as f:
                r = json.load(f)
            if [int(a) for a in r["arch"]] != [int(a) for a in arch]:
                raise UserError(f"{result_path} is for another architecture; remove it")
            if sec is not None:
                seed_note = f", seed {s.seed + rep}" if s.truth_seeds > 1 else ""
                opts.log(f"subnet {k + 1}/{n}{seed_note} ({archs['flops'][k] / 1e6:.2f}M FLOPs): "
                         f"top-1 {r['final_acc_top1']:.2f}% in {sec:.0f}s")
            runs[k].append(r)
    return [dict(top1=float(np.mean([r["final_acc_top1"] for r in rs])),
                 top1_per_seed=[float(r["final_acc_top1"]) for r in rs],
                 iters=int(rs[0]["iters"]),
                 train_time=float(sum(r.get("train_time", 0.0) for r in rs)))
            for rs in runs]


# Seed-to-seed tau of the ground truth below which the study says it cannot conclude.
NOISY_TRUTH_TAU = 0.5


def noisy_truth_warning(reliability: dict | None) -> str | None:
    """The report's warning when the ground truth disagrees with itself too much."""
    if not reliability or reliability["tau"] is None or reliability["tau"] >= NOISY_TRUTH_TAU:
        return None
    return (f"the ground truth is noisy (two trainings of the same subnets agree only to tau "
            f"{reliability['tau']:+.2f}, mean |difference| {reliability['mean_abs_diff']:.1f} "
            f"points): no predictor can rank much better than that against it; a longer "
            f"--subnet-epochs budget is needed for a conclusive study")


def truth_reliability(truth_runs: list[dict], resamples: int, seed: int) -> dict | None:
    """How well the ground truth ranks itself: tau/rho between two training seeds.

    A predictor cannot be expected to agree with the truth better than two trainings of
    the same subnets agree with each other; None with a single seed.
    """
    from utils.ranking import bootstrap_indices, correlate
    per_seed = np.array([r["top1_per_seed"] for r in truth_runs], dtype=np.float64)
    if per_seed.shape[1] < 2:
        return None
    st = correlate(per_seed[:, 0], per_seed[:, 1], bootstrap_indices(len(per_seed), resamples,
                                                                     seed))
    return dict(between="seed 0 vs seed 1 top-1", tau=st["tau"], tau_ci=st["tau_ci"],
                rho=st["rho"], rho_ci=st["rho_ci"],
                mean_abs_diff=float(np.abs(per_seed[:, 0] - per_seed[:, 1]).mean()))


# ---- stage 4: scores -----------------------------------------------------------------

def bn_indicator_scores(snapshots: list[tuple[int, str]], archs: np.ndarray) -> list[dict]:
    from utils.indicator import indicator_matrix, score
    from utils.spaces import get_space
    from utils.supernet_checkpoint import load_supernet
    out = []
    for epoch, path in snapshots:
        sn = load_supernet(path)
        m = indicator_matrix(get_space(sn.config), sn.state_dict)
        out.append(dict(epoch=epoch, scores=[float(v) for v in score(m, archs)]))
    return out


def spos_scores(snapshots: list[tuple[int, str]], archs: np.ndarray, s: StudySettings,
                data: dict, opts: RunOptions, timing: Timing, folder: str) -> list[dict]:
    """SPOS accuracy of every architecture at every SPOS snapshot (cached per epoch)."""
    import torch
    from utils.spaces import get_space
    from utils.spos_score import SposScorer
    from utils.supernet_checkpoint import load_supernet
    torch.set_num_threads(opts.threads)
    out = []
    for epoch, path in snapshots:
        cache = os.path.join(folder, f"epoch_{epoch:03d}.json")
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
            if cached.get("archs") == archs.tolist():
                out.append(dict(epoch=epoch, scores=cached["scores"]))
                continue
        t0 = time.perf_counter()
        sn = load_supernet(path)
        scorer = SposScorer(get_space(sn.config), sn.state_dict, data["train"], data["val"],
                            bn_batches=s.spos_bn_batches, batch_size=s.spos_batch,
                            val_images=s.spos_val_images, device=opts.device, seed=s.seed,
                            workers=0, input_format=sn.input_format,
                            log=lambda m: None)
        scores = [float(v) for v in scorer(archs)]
        sec = time.perf_counter() - t0
        timing.add(os.path.basename(folder), sec)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        ckpt.write_json_atomic(dict(epoch=epoch, archs=archs.tolist(), scores=scores,
                                    seconds=sec, bn_images=scorer.bn_batches * s.spos_batch,
                                    val_images=scorer.val_images), cache)
        opts.log(f"SPOS scoring of the epoch-{epoch} supernet: {len(scores)} subnets in "
                 f"{sec:.0f}s")
        out.append(dict(epoch=epoch, scores=scores))
    return out


# ---- stage 5: statistics and report -----------------------------------------------

def rank_statistics(truth: np.ndarray, predictors: dict[str, dict], resamples: int,
                    seed: int, level: float = 0.95) -> dict[str, dict]:
    """tau/rho with intervals for each predictor, plus tau minus the FLOPs baseline's."""
    from utils.ranking import bootstrap_indices, correlate, paired_difference
    idx = bootstrap_indices(len(truth), resamples, seed)
    stats = {name: correlate(p["scores"], truth, idx, level) for name, p in predictors.items()}
    base = stats.get("flops")
    out = {}
    for name, p in predictors.items():
        st = stats[name]
        entry = dict(p, tau=st["tau"], tau_ci=st["tau_ci"], rho=st["rho"], rho_ci=st["rho_ci"],
                     resamples_used=st["resamples_used"])
        if base is not None and name != "flops":
            entry["tau_minus_flops"] = paired_difference(st["tau_boot"], base["tau_boot"],
                                                         st["tau"], base["tau"], level)
        out[name] = entry
    return out


def run_study(s: StudySettings, opts: RunOptions) -> dict:
    """Run (or resume) every stage and write ranking.json + plots; returns the report."""
    from utils.spaces import make_config, parse_skips
    s.check()
    t_start = time.perf_counter()
    opts.out = os.path.abspath(opts.out)
    opts.report_dir = os.path.abspath(opts.report_dir)
    os.makedirs(opts.out, exist_ok=True)
    timing = Timing(os.path.join(opts.out, "timing.json"))
    log = opts.log

    data = prepare_data(s, opts, timing)
    log(f"data: {data['root']} ({data['source']}): {data['train_images']} training, "
        f"{data['val_images']} validation images, {data['classes']} classes")
    cfg = make_config(s.space, fixed_skips=parse_skips(s.fixed_skips), input_size=s.input_size,
                      width_mult=s.width_mult, classes=data["classes"],
                      stem_stride=s.stem_stride)
    log(f"space: {cfg.describe()}")
    keys = stage_keys(s, data["id"], cfg.to_dict())

    sub_folder = os.path.join(opts.out, keys["subnets"])
    _mark(sub_folder, dict(data=data["id"], space_flags=s.space_flags(), seed=s.seed,
                           n=s.subnets, epochs=s.subnet_epochs, batch=s.subnet_batch,
                           lr=s.subnet_lr, flops_limit=s.flops_limit,
                           dropout=s.subnet_dropout, min_scale=s.min_scale,
                           lighting=s.lighting))
    archs = sample_archs(s, cfg, sub_folder)
    log(f"{len(archs['archs'])} architectures from {min(archs['flops']) / 1e6:.2f}M to "
        f"{max(archs['flops']) / 1e6:.2f}M FLOPs (limit {archs['flops_limit'] / 1e6:.2f}M)")
    # Sampled first (cheap, may fail on a bad limit), trained after the supernets.
    bn_snaps = train_supernet("bn", s, data, opts, timing, keys["supernet_bn"])
    spos_snaps = train_supernet("spos", s, data, opts, timing, keys["supernet_spos"])
    truth_runs = train_subnets(s, data, archs, opts, timing, sub_folder)
    truth = np.array([r["top1"] for r in truth_runs])
    a = np.array(archs["archs"], dtype=np.int64)

    predictors: dict[str, dict] = {}
    bn = bn_indicator_scores(bn_snaps, a)
    for e in bn:
        predictors[f"bn_indicator@{e['epoch']}"] = dict(
            family="bn_indicator", supernet="bn", epoch=e["epoch"], scores=e["scores"])
    # The indicator read off the SPOS supernet: BN-NAS argues it needs BN-only training.
    spos_bn = bn_indicator_scores(spos_snaps[-1:], a)[0]
    predictors[f"bn_indicator_spos_supernet@{spos_bn['epoch']}"] = dict(
        family="bn_indicator_spos_supernet", supernet="spos", epoch=spos_bn["epoch"],
        scores=spos_bn["scores"])
    score_folder = os.path.join(opts.out, keys["spos_scores"])
    _mark(score_folder, dict(supernet=keys["supernet_spos"], subnets=keys["subnets"],
                             bn_batches=s.spos_bn_batches, batch=s.spos_batch,
                             val_images=s.spos_val_images))
    for e in spos_scores(spos_snaps, a, s, data, opts, timing, score_folder):
        predictors[f"spos_accuracy@{e['epoch']}"] = dict(
            family="spos_accuracy", supernet="spos", epoch=e["epoch"], scores=e["scores"])
    predictors["flops"] = dict(family="flops", scores=[float(v) for v in archs["flops"]])
    predictors["params"] = dict(family="params", scores=[float(v) for v in archs["params"]])
    rng = np.random.default_rng(s.seed + 12345)
    predictors["random"] = dict(family="random", scores=[float(v) for v in rng.random(len(a))])

    stats = rank_statistics(truth, predictors, opts.bootstrap, s.seed)
    curves = {fam: [dict(epoch=p["epoch"], tau=p["tau"], tau_ci=p["tau_ci"], rho=p["rho"],
                         rho_ci=p["rho_ci"])
                    for p in stats.values() if p["family"] == fam]
              for fam in ("bn_indicator", "spos_accuracy")}
    subnets = [dict(id=subnet_name(k), arch=list(map(int, arch)),
                    arch_str=" ".join(map(str, arch)), flops=archs["flops"][k],
                    params=archs["params"][k], **truth_runs[k])
               for k, arch in enumerate(archs["archs"])]
    # Time spent on this study's results (data + its stage folders, over all resumes).
    stage_seconds = {k: round(timing.data[k], 1) for k in ["data", *keys.values()]
                     if k in timing.data}
    n = len(truth)
    reliability = truth_reliability(truth_runs, opts.bootstrap, s.seed)
    report = dict(
        version=VERSION, settings=dataclasses.asdict(s), config=cfg.to_dict(),
        config_text=cfg.describe(), flops_limit=archs["flops_limit"],
        flops_limit_rule=archs["flops_limit_rule"],
        data={k: data[k] for k in ("source", "train_images", "val_images", "classes")},
        ground_truth=dict(metric="final validation top-1 (%) after training from scratch, "
                                 "mean over the training seeds",
                          seeds=[s.seed + r for r in range(s.truth_seeds)],
                          reliability=reliability,
                          warning=noisy_truth_warning(reliability),
                          epochs=s.subnet_epochs, batch=s.subnet_batch, lr=s.subnet_lr,
                          dropout=s.subnet_dropout, min_scale=s.min_scale,
                          lighting=s.lighting,
                          iterations=truth_runs[0]["iters"], val_images=data["val_images"],
                          min=float(truth.min()), max=float(truth.max()),
                          mean=float(truth.mean()), std=float(truth.std())),
        bootstrap=dict(resamples=opts.bootstrap, level=0.95, seed=s.seed,
                       method="percentile; subnets resampled with replacement; the same "
                              "resamples for every predictor"),
        # Spread of tau for a score unrelated to the truth (no ties): a yardstick for "random".
        null_tau_sd=math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))),
        subnets=subnets,
        predictors={k: {kk: vv for kk, vv in v.items()} for k, v in stats.items()},
        curves=curves,
        # How far each supernet got (chance: loss ln(classes), top-1 100/classes).
        supernet_training={mode: supernet_curve(os.path.join(opts.out, keys[f"supernet_{mode}"]))
                           for mode in ("bn", "spos")},
        folders=keys,
        timing=dict(stage_seconds=stage_seconds,
                    stage_total_seconds=round(sum(stage_seconds.values()), 1),
                    this_invocation_seconds=None, threads=opts.threads),
    )
    os.makedirs(opts.report_dir, exist_ok=True)
    from utils.plots import plot_ranking
    report["plots"] = [os.path.basename(p) for p in plot_ranking(report, opts.report_dir)]
    report["timing"]["this_invocation_seconds"] = round(time.perf_counter() - t_start, 1)
    ckpt.write_json_atomic(report, os.path.join(opts.report_dir, "ranking.json"))
    return report


def summary_lines(report: dict) -> list[str]:
    """One line per predictor: tau [CI], rho [CI]; best first within the table's order."""
    def f(v):
        return "  n/a" if v is None else f"{v:+.3f}"

    def ci(c):
        return "[  n/a,   n/a]" if c[0] is None else f"[{c[0]:+.2f}, {c[1]:+.2f}]"

    lines = [f"{'predictor':<34} {'Kendall tau':>8} {'95% CI':>14}  {'Spearman rho':>8} "
             f"{'95% CI':>14}"]
    for name, p in report["predictors"].items():
        lines.append(f"{name:<34} {f(p['tau']):>11} {ci(p['tau_ci']):>14}  {f(p['rho']):>12} "
                     f"{ci(p['rho_ci']):>14}")
    return lines
