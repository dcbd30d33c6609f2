"""Stage 3: retrain the found architecture from scratch, or evaluate a retrained checkpoint.

    torchrun --nproc_per_node=8 retrain/train_from_scratch.py \
        --train_dir /data/imagenet/train --test_dir /data/imagenet/val --arch-from search/log
    python3 -m torch.distributed.launch --nproc_per_node=8 retrain/train_from_scratch.py \
        --train_dir ... --test_dir ... --model_id "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
    python3 retrain/train_from_scratch.py --eval --eval-resume eval-retrain/best.pth.tar \
        --test_dir /data/imagenet/val

Everything goes to `eval-<--save>/` (checkpoint.pth.tar, best.pth.tar, metrics.jsonl,
log.txt, result.json); rerunning the same command resumes (a finished run reports its
result and exits 0). While a run trains, eval-NAME/.lock names its PID: a second run on
the same folder is refused; resuming on other training data needs --allow-data-change.
Settings can come from `--config FILE.yaml` (e.g. configs/retrain_imagenet.yaml; flags
override it); training writes its resolved settings to eval-NAME/config.yaml (--eval with
--save: eval-NAME/eval_config.yaml), which `--config` reruns.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


import torch

from utils import files
from utils.checkpoints import io as ckpt
from utils.cli.config_file import add_config_arg, space_settings, write_settings
from utils.cli.common import (ArgumentParser, UserError, add_space_args, batch_size_int, fraction,
                       main_guard, momentum_float, nonneg_float, nonneg_int, positive_int,
                       seed_int)
from utils.data.loaders import (DEFAULT_INPUT_FORMAT, DEFAULT_RESIZE_MODE, add_augment_args,
                        add_data_args, augment_kwargs, build_train_loader, build_val_loader,
                        first_unreadable_image)
from utils.dist import (DistEnv, add_launcher_args, all_gather_objects, all_reduce_sum, barrier,
                        cleanup, collective_guard, describe, maybe_freeze, setup)
from utils.train.engine import (Amp, GracefulStop, LossGuard, MetricsLogger, NonFiniteError,
                          ProgressBar, Timer, add_amp_args, report_changed_hyper,
                          resolve_channels_last, rng_state, seed_everything, set_rng_state)
from utils.data.identity import check_resume_data, label_map, loader_fingerprint
from utils.flops.table import load_table
from utils.checkpoints.lock import OutputLock
from utils.spaces import SpaceConfig, get_space
from utils.checkpoints.subnet import (SubnetCheckpoint, arch_from_log, load_subnet_state, published_arch,
                             read_subnet_checkpoint, resolve_config, subnet_state,
                             unset_space_defaults)
from utils.train.subnet import SubnetTrainer, sync_buffers
from utils.train.evaluate import EvalResult, evaluate

# Settings that fix which samples and LR each iteration gets: a checkpoint made with other
# values cannot be continued exactly, so resuming with them changed is refused.
RUN_DEFINING = ("seed", "batch_size", "total_iters", "steps_per_epoch")
HYPER = ("learning_rate", "momentum", "weight_decay", "grad_clip", "label_smooth", "amp",
         "dropout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Retrain a BN-NAS subnet from scratch (or evaluate one with --eval).",
        epilog="Space flags not given come from the search log (--arch-from) or the evaluated "
               "checkpoint, else the ImageNet defaults; --classes then defaults to the number "
               "of class folders of the data. When resuming or evaluating, --input-format "
               "and --resize-mode default to the checkpoint's (bgr255 and linear, the "
               "original's OpenCV resize, for the reference's checkpoints).")
    p.add_argument("--train_dir", "--train-dir", dest="train_dir", default=None,
                   help="ImageFolder training set (<dir>/<class>/<image>)")
    p.add_argument("--test_dir", "--test-dir", dest="test_dir", default=None,
                   help="ImageFolder validation set")
    p.add_argument("--model_id", "--model-id", dest="model_id", default=None,
                   help='architecture, e.g. "3 -1 0 4 ..." (-1 = skip); default: the '
                        "published one of the space (BN-NAS for mobilenet)")
    p.add_argument("--arch-from", "--arch_from", dest="arch_from", default=None,
                   metavar="LOG_DIR",
                   help="retrain the best architecture of this search log; space flags "
                        "not given come from the log")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=batch_size_int,
                   default=1024,
                   help="GLOBAL batch size, split evenly over the processes; validation "
                        "uses the same per-process batch (default: 1024)")
    p.add_argument("--learning_rate", "--learning-rate", dest="learning_rate", type=nonneg_float,
                   default=0.5, help="initial LR, decayed linearly to 0 per iteration "
                                     "(default: 0.5)")
    p.add_argument("--momentum", type=momentum_float, default=0.9,
                   help="SGD momentum, [0, 1) (default: 0.9)")
    p.add_argument("--weight_decay", "--weight-decay", dest="weight_decay", type=nonneg_float,
                   default=4e-5, help="(default: 4e-5) on the parameters --decay-params names")
    p.add_argument("--decay-params", "--decay_params", dest="decay_params", default="conv",
                   choices=("conv", "conv+linear-weight"),
                   help="which parameters weight decay applies to: conv = the 4-D conv "
                        "weights only, what the original's decay group amounts to in its "
                        "retrained network (default); conv+linear-weight = also the "
                        "classifier's weight, as this project did before")
    p.add_argument("--epochs", type=positive_int, default=240, help="(default: 240)")
    p.add_argument("--total_iters", "--total-iters", dest="total_iters", type=positive_int,
                   default=None,
                   help="number of iterations; overrides --epochs")
    p.add_argument("--save", default=None,
                   help="run name: outputs go to eval-NAME/ (default NAME: retrain)")
    p.add_argument("--allow-data-change", "--allow_data_change", dest="allow_data_change",
                   action="store_true",
                   help="resume although --train_dir is not the data the checkpoint was "
                        "trained on (images added or removed; the class names must match)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds init, data order, augmentation, dropout (default: 0)")
    p.add_argument("--grad_clip", "--grad-clip", dest="grad_clip", type=nonneg_float,
                   default=5.0,
                   help="clip the gradient norm (0 = off) (default: 5)")
    p.add_argument("--label_smooth", "--label-smooth", dest="label_smooth", type=fraction,
                   default=0.1, help="(default: 0.1)")
    p.add_argument("--dropout", type=fraction, default=None,
                   help="dropout before the classifier (default: the space's, 0.2 mobilenet, "
                        "0.1 shufflenet)")
    p.add_argument("--report_freq", "--report-freq", dest="report_freq", type=positive_int,
                   default=50,
                   help="iterations between progress/metrics updates, the only host syncs "
                        "(default: 50)")
    p.add_argument("--eval-freq", "--eval_freq", dest="eval_freq", type=positive_int,
                   default=None,
                   help="iterations between validations (default: once per epoch); also at "
                        "the end")
    p.add_argument("--stop-after", "--stop_after", dest="stop_after", type=nonneg_int,
                   default=0,
                   help="save and exit after N iterations in this invocation (time-limited "
                        "jobs); rerun to continue")
    p.add_argument("--eval", action="store_true",
                   help="only evaluate --eval-resume on --test_dir")
    p.add_argument("--eval-resume", "--eval_resume", dest="eval_resume", default=None,
                   help="checkpoint to evaluate: this project's or the reference's retrained "
                        "one (needs --model_id) (default: eval-NAME/best.pth.tar)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda (one GPU per process) (default: auto)")
    add_data_args(p)
    add_augment_args(p)
    add_amp_args(p)
    add_space_args(p, classes_default=None)
    add_launcher_args(p)
    # Unset space flags and input format fall back to the search log / checkpoint.
    unset_space_defaults(p)
    p.set_defaults(input_format=None)
    add_config_arg(p, "retrain/train_from_scratch.py")
    args = p.parse_args(argv)
    # Numeric ranges are checked while parsing (the utils.cli.common types above).
    if args.model_id is not None and args.arch_from is not None:
        raise UserError("give either --model_id or --arch-from, not both")
    return args


# ---- architecture and config -----------------------------------------------------------

def _count_class_dirs(root: str | None) -> int | None:
    if not root or not os.path.isdir(root):
        return None  # the data loader reports what is wrong with it
    n = sum(1 for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    return n or None


def choose_arch(args: argparse.Namespace, data_classes: int | None,
                loaded: SubnetCheckpoint | None = None) -> tuple[tuple[int, ...], SpaceConfig, str]:
    """(architecture, space config, where the architecture came from).

    Priority: --arch-from (config from the log), --model_id, the evaluated checkpoint's
    own architecture, the space's published one. Space flags given always win.
    """
    base, text, arch, source = None, None, None, ""
    if args.arch_from:
        arch, base = arch_from_log(args.arch_from)
        source = f"best of search log {args.arch_from}"
    elif args.model_id is not None:
        text, source = args.model_id, "--model_id"
    if loaded is not None and loaded.kind == "subnet":
        base = base or loaded.config
        if arch is None and text is None:
            arch, source = loaded.arch, f"checkpoint {loaded.path}"
    cfg = resolve_config(args, base, data_classes)
    space = get_space(cfg)
    if text is not None:
        arch = space.parse(text)
    elif arch is None:
        if loaded is not None:
            raise UserError(f"{loaded.path} is a reference checkpoint, which does not record "
                            f"its architecture: give it with --model_id")
        try:
            arch = space.parse(published_arch(cfg.space))
        except ValueError as e:
            raise UserError(f"the default architecture (the published {cfg.space} one) does "
                            f"not fit {cfg.describe()} ({e}): give --model_id or "
                            f"--arch-from") from None
        source = "published architecture (default)"
    else:
        arch = space.validate(arch)
    return tuple(arch), cfg, source


class RunLog:
    """Rank 0 prints, and keeps a copy in eval-NAME/log.txt as the reference did."""

    def __init__(self, env: DistEnv, path: str | None):
        self.env, self.path = env, path

    def __call__(self, text: str, echo: bool = True) -> None:
        if not self.env.is_main:
            return
        if echo:
            print(text, flush=True)
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path, "a") as f:
                for line in text.splitlines():
                    f.write(f"{stamp} {line}\n")


def describe_arch(space, arch, cfg: SpaceConfig, source: str) -> str:
    table = load_table(cfg)
    flops, params = table.flops_of(arch), table.params_of(arch)
    return (f"architecture: {space.format(arch)}  ({source})\n"
            f"space: {cfg.describe()}\n"
            f"FLOPs: {flops / 1e6:.2f}M  params: {params / 1e6:.2f}M (lookup table)")


def _val_progress(env: DistEnv, total: int, desc: str):
    def wrap(loader):
        bar = ProgressBar(total, env, desc=desc)
        try:
            for batch in loader:
                yield batch
                bar.update(1)
        finally:
            bar.close()
    return wrap


def _saved_args(args: argparse.Namespace) -> dict:
    # Plain values only, so the checkpoint stays loadable with weights_only=True.
    return {k: v for k, v in vars(args).items()
            if v is None or isinstance(v, (bool, int, float, str))}


# ---- --eval ----------------------------------------------------------------------------

def eval_data_settings(args: argparse.Namespace,
                       loaded: SubnetCheckpoint) -> tuple[str, str, str]:
    """(input format, resize mode, where the resize mode came from) for --eval.

    Flags given win; else the conventions the weights were trained and validated with:
    this project's checkpoints record theirs (older ones: rgb / antialias), the original's
    retrained checkpoints were fed BGR 0-255 images resized by OpenCV INTER_LINEAR without
    antialiasing (its 75.464% top-1 is measured that way).
    """
    if loaded.kind == "subnet":
        saved = loaded.raw.get("args") or {}
        saved_format, saved_resize = saved.get("input_format"), saved.get("resize_mode")
    else:
        saved_format, saved_resize = "bgr255", "linear"
    input_format = args.input_format or saved_format or DEFAULT_INPUT_FORMAT
    resize_mode = args.resize_mode or saved_resize or DEFAULT_RESIZE_MODE
    if args.resize_mode:
        note = "--resize-mode"
    elif loaded.kind == "reference":
        note = "default for the original's checkpoints: its OpenCV resize"
    else:
        note = "the checkpoint's" if saved_resize else "default"
    return input_format, resize_mode, note


def run_eval(args: argparse.Namespace, env: DistEnv) -> int:
    save_dir = save_dir_of(args)
    path = args.eval_resume or os.path.join(save_dir, "best.pth.tar")
    if not args.test_dir:
        raise UserError("--test_dir is required (an ImageFolder directory: <root>/<class>/<image>)")
    if args.save and env.is_main:  # eval.json goes there: refuse an unwritable place now
        files.check_output_dir(save_dir, "the --save folder")
    loaded = read_subnet_checkpoint(path)
    arch, cfg, source = choose_arch(args, _count_class_dirs(args.test_dir), loaded)
    space = get_space(cfg)
    state = subnet_state(loaded, space, arch)
    net = space.subnet(arch, dropout=args.dropout)
    load_subnet_state(net, state, path, space.format(arch))
    input_format, resize_mode, resize_note = eval_data_settings(args, loaded)
    log = RunLog(env, None)
    log(describe_arch(space, arch, cfg, source))
    per_rank = max(1, args.batch_size // env.world_size)
    loader = build_val_loader(args.test_dir, cfg.input_size, per_rank, env, args.workers,
                              input_format, classes=cfg.classes, resize_mode=resize_mode)
    # Labels are the checkpoint's outputs: class folders matched by the names it records
    # (a subset of its classes is fine), else by position (then all of them are needed).
    loader.relabel(label_map(loader.classes, class_names_of(loaded), cfg.classes,
                             "--test_dir", path))
    amp = Amp(args.amp, env.device)
    channels_last = resolve_channels_last(args.channels_last, env.device)
    net = net.to(env.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    log(f"evaluating {path} ({'reference' if loaded.kind == 'reference' else 'subnet'} "
        f"checkpoint, iteration {loaded.iters}) on {loader.num_samples} images of "
        f"{args.test_dir}; input {input_format}; resize {resize_mode} ({resize_note}); "
        f"{describe(env)}")
    if args.save and env.is_main:  # beside eval.json: --config reruns this evaluation
        write_settings(args, os.path.join(save_dir, EVAL_SETTINGS_NAME),
                       resolved=dict(space_settings(cfg), input_format=input_format,
                                     resize_mode=resize_mode),
                       notes=[f"evaluated: {path}, architecture {space.format(arch)} "
                              f"({source})"])
    res = evaluate(net, loader, env, amp=amp, channels_last=channels_last,
                   progress=_val_progress(env, len(loader), "eval"))
    if env.is_main:
        print(f"valid_acc_top1 {res.top1:.4f}\nvalid_acc_top5 {res.top5:.4f}\n"
              f"valid_loss {res.loss:.4f}  ({res.correct1}/{res.samples} correct)", flush=True)
        if args.save:
            out = os.path.join(save_dir, "eval.json")
            files.write_json_atomic(dict(valid_acc_top1=res.top1, valid_acc_top5=res.top5,
                                        valid_loss=res.loss, correct_top1=res.correct1,
                                        correct_top5=res.correct5, samples=res.samples,
                                        checkpoint=path, arch=list(arch), config=cfg.to_dict(),
                                        input_format=input_format,
                                        resize_mode=resize_mode), out)
            print(f"wrote {out}", flush=True)
    return 0


# ---- training --------------------------------------------------------------------------

def check_resume(state: dict, path: str, cfg: SpaceConfig, arch, run: dict,
                 args: argparse.Namespace, input_format: str, log: RunLog,
                 resize_mode: str = DEFAULT_RESIZE_MODE) -> None:
    """Refuse a checkpoint that is not this run's, with a one-line reason."""
    if state.get("kind") != "subnet":
        what = state.get("kind") or "not written by this project's retraining"
        raise UserError(f"{path} is not a subnet checkpoint of this project ({what}); "
                        f"use another --save name")
    ckpt.check_config(state["config"], cfg, path)
    saved_arch = tuple(int(a) for a in state["arch"])
    if saved_arch != tuple(arch):
        fmt = " ".join(map(str, saved_arch))
        raise UserError(f"checkpoint {path} is for architecture '{fmt}', not "
                        f"'{' '.join(map(str, arch))}': use another --save name")
    diffs = [f"{k}: {state.get(k)} vs {run[k]}" for k in RUN_DEFINING if state.get(k) != run[k]]
    saved_format = (state.get("args") or {}).get("input_format")
    if saved_format and saved_format != input_format:
        diffs.append(f"input_format: {saved_format} vs {input_format}")
    # Checkpoints from before --resize-mode existed were made with the antialiased resize.
    saved_resize = (state.get("args") or {}).get("resize_mode") or DEFAULT_RESIZE_MODE
    if saved_resize != resize_mode:
        diffs.append(f"resize_mode: {saved_resize} vs {resize_mode}")
    if diffs:
        raise UserError(f"checkpoint {path} was made with other run settings "
                        f"({'; '.join(diffs)}; checkpoint vs now): rerun with the original "
                        f"settings or use another --save name")
    old = state.get("args") or {}
    # The optimizer's groups depend on which parameters are decayed: checkpoints from
    # before --decay-params decayed the classifier's weight too.
    saved_decay = old.get("decay_params") or "conv+linear-weight"
    if saved_decay != args.decay_params:
        raise UserError(f"checkpoint {path} was trained with --decay-params {saved_decay}; "
                        f"resume with --decay-params {saved_decay} or use another --save")
    report_changed_hyper(old, args, HYPER, log)


def save_dir_of(args: argparse.Namespace) -> str:
    if args.save is not None and not args.save.strip():
        raise UserError("--save is empty (an unset variable?): give a run name, or leave "
                        "the flag out for eval-retrain/")
    return f"eval-{args.save or 'retrain'}"


# Files of eval-NAME/ written atomically (stale temp files of a killed save are removed).
SETTINGS_NAME, EVAL_SETTINGS_NAME = "config.yaml", "eval_config.yaml"
OUTPUT_FILES = ("checkpoint.pth.tar", "best.pth.tar", "result.json", "metrics.jsonl",
                "eval.json", SETTINGS_NAME, EVAL_SETTINGS_NAME)
LOCK_NAME = ".lock"


def class_names_of(loaded: SubnetCheckpoint) -> list[str] | None:
    """The class names a checkpoint of ours records (output i = names[i]); None for the
    reference's checkpoints and ours from before they were recorded."""
    names = loaded.raw.get("classes") if loaded.kind == "subnet" else None
    return names if isinstance(names, list) and names and all(
        isinstance(c, str) for c in names) else None


def reconcile_best(state: dict, ckpt_path: str, best_path: str, log: RunLog) -> dict:
    """The best-so-far (top1, top5, iters) to continue with, made consistent with what
    best.pth.tar holds (rank 0). Writes go best.pth.tar first, then checkpoint.pth.tar;
    a crash between them leaves best.pth.tar ahead of the checkpoint's record:
    - the checkpoint is itself the best it records (saved right after that validation)
      but best.pth.tar holds another iteration or is missing: rewrite best from it;
    - else best.pth.tar holds a valid state of this run: continue with what it holds
      (so result.json and the log report that file's iteration and top-1);
    - else (missing / unreadable, not recreatable): warn and track the best anew."""
    rec = dict(top1=float(state.get("best_acc_top1", -1.0)),
               top5=float(state.get("best_acc_top5", 0.0)), iters=int(state.get("best_iters", 0)))
    have, why = None, "is missing"
    if os.path.exists(best_path):
        try:
            b = ckpt.load(best_path)
        except UserError as e:
            b, why = None, f"is unreadable ({e})"
        if b is not None:
            if b.get("kind") == "subnet" and b.get("arch") == state.get("arch") and \
                    b.get("config") == state.get("config") and "iters" in b:
                have = dict(top1=float(b.get("best_acc_top1", -1.0)),
                            top5=float(b.get("best_acc_top5", 0.0)), iters=int(b["iters"]))
            else:
                why = "is not a checkpoint of this run"
    if have is not None and (have["iters"], have["top1"]) == (rec["iters"], rec["top1"]):
        return rec
    if have is None and rec["iters"] <= 0:
        return rec  # no validation yet: no best to hold
    here = int(state.get("iters", -1))
    if rec["iters"] > 0 and here == rec["iters"] and not state.get("eval_pending"):
        ckpt.save_atomic(state, best_path)
        held = "missing" if have is None else f"iteration {have['iters']}"
        log(f"note: {best_path} held {held}, not the best iteration {rec['iters']} that "
            f"{ckpt_path} records; rewrote it from the checkpoint (which is that iteration)")
        return rec
    if have is not None:
        log(f"warning: {best_path} holds iteration {have['iters']} (top-1 {have['top1']:.4f}), "
            f"not iteration {rec['iters']} that {ckpt_path} records as the best (a save was "
            f"interrupted); continuing with what {best_path} holds")
        return have
    log(f"warning: {best_path} {why} and {ckpt_path} (iteration {here}) cannot recreate "
        f"the best iteration {rec['iters']} it records; the best is tracked anew from the "
        f"next validation")
    return dict(top1=-1.0, top5=0.0, iters=0)


def result_record(arch, cfg: SpaceConfig, info: dict, iters: int, best: dict,
                  last_eval: dict, train_time) -> dict:
    """What result.json holds: the best (as best.pth.tar holds it) and final accuracy."""
    return dict(arch=list(arch), config=cfg.to_dict(), **info, iters=iters,
                best_acc_top1=best["top1"], best_acc_top5=best["top5"], best_iters=best["iters"],
                final_acc_top1=last_eval.get("top1"), final_acc_top5=last_eval.get("top5"),
                train_time=train_time)


def report_finished(state: dict, path: str, log: RunLog, best: dict | None = None) -> None:
    last = state.get("last_eval") or {}
    best = best or dict(top1=state.get("best_acc_top1", float("nan")),
                        iters=state.get("best_iters"))
    log(f"{path}: retraining already finished ({state['iters']}/{state['total_iters']} "
        f"iterations); best valid_acc_top1 {best['top1']:.4f} "
        f"(iteration {best['iters']}), final valid_acc_top1 "
        f"{last.get('top1', float('nan')):.4f} valid_acc_top5 "
        f"{last.get('top5', float('nan')):.4f}")


def check_val_images(val_loader, env: DistEnv) -> int:
    """Open every validation image's header (each rank its share) before training, so a
    corrupt one stops the run now, not after the first epoch; returns how many."""
    samples = val_loader.dataset.samples
    bad = first_unreadable_image([p for p, _ in samples[env.rank::env.world_size]])
    found = [m for m in all_gather_objects(bad, env) if m]
    if found:
        raise UserError(f"{found[0]} (--test_dir, checked before training)")
    return len(samples)


def fix_result(save_dir: str, state: dict, arch, cfg: SpaceConfig, best: dict,
               log: RunLog) -> None:
    """A finished run's result.json, rewritten when it is missing or does not report what
    best.pth.tar holds (a run killed between its last saves)."""
    import json
    path = os.path.join(save_dir, "result.json")
    want = result_record(arch, cfg, dict(flops=state.get("flops"), params=state.get("params")),
                         int(state["iters"]), best, state.get("last_eval") or {},
                         state.get("train_time"))
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == want[k] for k in
                                     ("iters", "best_acc_top1", "best_iters")):
        return
    files.write_json_atomic(want, path)
    log(f"note: {'wrote the missing' if old is None else 'corrected'} {path} (best top-1 "
        f"{best['top1']:.4f} at iteration {best['iters']}, as best.pth.tar holds)")


def train(args: argparse.Namespace, env: DistEnv) -> int:
    save_dir = save_dir_of(args)
    for flag, value in (("--train_dir", args.train_dir), ("--test_dir", args.test_dir)):
        if not value:
            raise UserError(f"{flag} is required (an ImageFolder directory: "
                            f"<root>/<class>/<image>)")
    log = RunLog(env, os.path.join(save_dir, "log.txt"))
    arch, cfg, source = choose_arch(args, _count_class_dirs(args.train_dir))
    space = get_space(cfg)
    ckpt_path, best_path = (os.path.join(save_dir, n)
                            for n in ("checkpoint.pth.tar", "best.pth.tar"))
    state = ckpt.load(ckpt_path) if os.path.exists(ckpt_path) else None
    # Resuming without --input-format / --resize-mode keeps what the run was started with.
    saved = (state or {}).get("args") or {}
    input_format = args.input_format or saved.get("input_format") or DEFAULT_INPUT_FORMAT
    # One resize for training crops and validation; recorded in the checkpoint's args.
    resize_mode = args.resize_mode or saved.get("resize_mode") or DEFAULT_RESIZE_MODE
    args.resize_mode = resize_mode
    loader = build_train_loader(args.train_dir, cfg.input_size, args.batch_size, env,
                                args.workers, args.seed, input_format=input_format,
                                classes=cfg.classes, **augment_kwargs(args))
    val_loader = build_val_loader(args.test_dir, cfg.input_size, loader.batch_size_per_rank,
                                  env, args.workers, input_format, classes=cfg.classes,
                                  resize_mode=resize_mode)
    unknown = [c for c in val_loader.classes if c not in loader.classes]
    if unknown:
        raise UserError(f"--test_dir has class folder '{unknown[0]}' that --train_dir lacks, "
                        f"so its images have no label")
    # ImageFolder numbers classes by sorted folder name: validation labels follow the
    # training folder's names (a subset of its classes is fine).
    val_loader.relabel(label_map(val_loader.classes, loader.classes, cfg.classes,
                                 "--test_dir", "--train_dir"))
    # Recorded in every checkpoint: class names (output i = classes[i]) and a fingerprint
    # of the training data (per-class counts, sha256 of the file list) resuming must match.
    identity = dict(classes=list(loader.classes),
                    data=loader_fingerprint(args.train_dir, loader))
    spe = loader.steps_per_epoch
    run = dict(seed=args.seed, batch_size=args.batch_size, steps_per_epoch=spe,
               total_iters=args.total_iters or args.epochs * spe)
    total = run["total_iters"]
    eval_freq = args.eval_freq or spe
    args.dropout = space.default_dropout if args.dropout is None else args.dropout
    pending = False  # the checkpoint was saved at a validation point it did not validate
    if state is not None:
        check_resume(state, ckpt_path, cfg, arch, run, args, input_format, log, resize_mode)
        check_resume_data(state.get("data"), identity["data"], ckpt_path,
                          args.allow_data_change, log)
        pending = bool(state.get("eval_pending"))
        if int(state["iters"]) >= total and not pending:
            best = reconcile_best(state, ckpt_path, best_path, log) if env.is_main else None
            if env.is_main:
                fix_result(save_dir, state, arch, cfg, best, log)
            report_finished(state, ckpt_path, log, best)
            return 0
    n_checked = check_val_images(val_loader, env)

    amp = Amp(args.amp, env.device)
    channels_last = resolve_channels_last(args.channels_last, env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    net = space.subnet(arch, dropout=args.dropout)
    seed_everything(args.seed, env.rank)  # per-rank dropout masks
    trainer = SubnetTrainer(net, env, total_iters=total, lr=args.learning_rate,
                            momentum=args.momentum, weight_decay=args.weight_decay,
                            grad_clip=args.grad_clip, label_smooth=args.label_smooth, amp=amp,
                            channels_last=channels_last, decay_policy=args.decay_params)
    start, prior_time = 0, 0.0
    best = dict(top1=-1.0, top5=0.0, iters=0)
    last_eval: dict = {}
    if state is not None:
        load_subnet_state(trainer.net, ckpt.clean_state_dict(state["state_dict"]), ckpt_path)
        trainer.load_state_dict(state)
        per_rank = state.get("rng_per_rank") or []
        if len(per_rank) == env.world_size:
            set_rng_state(per_rank[env.rank])
        start, prior_time = int(state["iters"]), float(state.get("train_time", 0.0))
        best = dict(top1=float(state.get("best_acc_top1", -1.0)),
                    top5=float(state.get("best_acc_top5", 0.0)),
                    iters=int(state.get("best_iters", 0)))
        if env.is_main:  # best.pth.tar and the checkpoint's record of it agree from here
            best = reconcile_best(state, ckpt_path, best_path, log)
        last_eval = dict(state.get("last_eval") or {})

    log(describe_arch(space, arch, cfg, source) + "\n"
        f"data: {len(loader.dataset)} training images, {loader.num_classes} classes, "
        f"{val_loader.num_samples} validation images (all {n_checked} checked to open); "
        f"input {input_format}; resize "
        f"{resize_mode}\n"
        f"batch {args.batch_size} global, {loader.batch_size_per_rank} per process; "
        f"{spe} iterations/epoch; {describe(env)}; amp={args.amp}; "
        f"channels_last={channels_last}; dropout {args.dropout}\n"
        f"SGD lr {args.learning_rate} (linear to 0) momentum {args.momentum} wd "
        f"{args.weight_decay} ({args.decay_params} weights), label smoothing {args.label_smooth}, "
        f"grad-norm clip {args.grad_clip}; validation every {eval_freq} iterations\n"
        + (f"resuming from {ckpt_path} at iteration {start}/{total}" if start
           else f"training {total} iterations -> {save_dir}/"))

    if env.is_main:  # the resolved settings: --config reruns them
        write_settings(args, os.path.join(save_dir, SETTINGS_NAME),
                       resolved=dict(space_settings(cfg), input_format=input_format),
                       notes=[f"architecture: {space.format(arch)} ({source})",
                              f"{total} iterations of {spe} per epoch"])
    metrics_path = os.path.join(save_dir, "metrics.jsonl")
    if state is not None and env.is_main:
        dropped = files.trim_metrics(metrics_path, start)
        if dropped:
            log(f"note: dropped {dropped} row(s) of {metrics_path} logged after iteration "
                f"{start} (the checkpoint's), so they are not logged twice")
    logger = MetricsLogger(metrics_path, env, tensorboard_dir=os.path.join(save_dir, "tb"))
    bar = ProgressBar(total, env, desc="retrain", initial=start)
    stop = GracefulStop(env)
    it, timer = start, Timer()
    window_start, window_it = time.perf_counter(), start
    stopped_by: str | None = None
    sums = torch.zeros(2, device=env.device)  # loss * n, correct: read at report points only
    per_rank_batch = loader.batch_size_per_rank
    info = dict(flops=load_table(cfg).flops_of(arch), params=load_table(cfg).params_of(arch))

    guard = LossGuard(env, start)  # nan/inf losses, watched on the device
    saved_at = [start if state is not None else None]

    def ensure_finite(weights: bool = False) -> None:
        """Stop at once on a nan/inf loss (or weights, before validating or saving): a
        diverged state is never validated, reported or saved (best.pth.tar included)."""
        what = guard.divergence(trainer.net, it, total, weights)
        if what is None:
            return
        kept = (f"{ckpt_path} keeps iteration {saved_at[0]}, the last good state"
                if saved_at[0] is not None else "nothing was saved")
        logger.log(it, event="diverged", reason=what)
        logger.close()
        bar.close()
        log(f"training diverged: {what} ({kept})", echo=False)
        raise NonFiniteError(f"training diverged: {what} ({kept}); lower --learning_rate "
                             f"or check the data")

    def checkpoint_now(write_best: bool = False, verified: bool = False,
                       eval_pending: bool = False) -> None:
        if not verified:
            ensure_finite(weights=True)
        saved_at[0] = it
        rngs = all_gather_objects(rng_state(), env)
        if not env.is_main:
            return
        state = dict(kind="subnet", config=cfg.to_dict(), arch=list(arch),
                     state_dict=ckpt.clean_state_dict(
                         {k: v.detach().cpu() for k, v in trainer.net.state_dict().items()}),
                     iters=it, epoch=it // spe, total_iters=total, steps_per_epoch=spe,
                     batch_size=args.batch_size, seed=args.seed,
                     best_acc_top1=best["top1"], best_acc_top5=best["top5"],
                     best_iters=best["iters"], last_eval=dict(last_eval),
                     rng=rngs[0], rng_per_rank=rngs, args=_saved_args(args),
                     train_time=prior_time + timer.elapsed(), finished=it >= total,
                     eval_pending=eval_pending, **identity, **info, **trainer.state_dict())
        if write_best:
            # best.pth.tar first, then the checkpoint that records it: a crash in between
            # leaves best ahead of the checkpoint, which reconcile_best sorts out on resume.
            ckpt.save_atomic(state, best_path)
            files.fault("retrain-after-best")
        ckpt.save_atomic(state, ckpt_path)

    def validate_now() -> EvalResult:
        sync_buffers(trainer.net, env)
        with torch.random.fork_rng(devices=[]):  # see _batches
            return evaluate(trainer.net, val_loader, env, amp=amp, channels_last=channels_last)

    def validate_point() -> None:
        """Validate iteration `it` (already saved), then save what it found, then log it."""
        nonlocal best, last_eval
        files.fault("retrain-validate")
        res = validate_now()
        improved = res.top1 > best["top1"]
        if improved:
            best = dict(top1=res.top1, top5=res.top5, iters=it)
        last_eval = dict(top1=res.top1, top5=res.top5, loss=res.loss, iters=it)
        checkpoint_now(write_best=improved, verified=True)
        msg = (f"iteration {it}/{total} (epoch {it / spe:.2f}): valid_acc_top1 "
               f"{res.top1:.4f} valid_acc_top5 {res.top5:.4f} valid_loss "
               f"{res.loss:.4f}; best top-1 {best['top1']:.4f} at {best['iters']}")
        bar.write(msg)  # above the bar; the log below then only records it
        log(msg, echo=bar.bar is None)
        logger.log(it, valid_acc_top1=res.top1, valid_acc_top5=res.top5,
                   valid_loss=res.loss, best_acc_top1=best["top1"])

    if pending:
        log(f"validating iteration {it} first: the previous run saved it but did not "
            f"finish validating it")
        validate_point()

    with stop:
        while it < total and stopped_by is None:
            epoch, step0 = divmod(it, spe)
            loader.set_epoch(epoch, step0)
            for batch in _batches(loader):
                x, y = loader.prepare(batch, env.device, channels_last)
                maybe_freeze(env, it)
                loss, correct = trainer.step(x, y, it)
                guard.step(loss)
                sums += torch.stack([loss.float() * per_rank_batch, correct.float()])
                it += 1
                if it % args.report_freq == 0 or it == total:
                    ensure_finite()
                    loss_sum, n_correct = all_reduce_sum(sums.clone(), env).tolist()
                    sums.zero_()
                    n = max(1, (it - window_it) * args.batch_size)
                    now = time.perf_counter()
                    values = dict(loss=loss_sum / n, top1=100.0 * n_correct / n,
                                  lr=trainer.schedule.lr_at(it - 1),
                                  img_s=n / max(now - window_start, 1e-9))
                    window_start, window_it = now, it
                    bar.set_position(it, **values)
                    logger.log(it, epoch=it / spe, **values)
                if it % eval_freq == 0 or it == total:
                    ensure_finite(weights=True)
                    # The training work is saved BEFORE validating: a failure while
                    # validating loses nothing, and the rerun validates this iteration.
                    checkpoint_now(verified=True, eval_pending=True)
                    validate_point()
                if it >= total:
                    break
                stopped_by = stop.reason(it, start, args.stop_after)
                if stopped_by is not None:
                    checkpoint_now()
                    break
    bar.close()
    elapsed = timer.elapsed()
    done = it - start
    ips = done * args.batch_size / max(elapsed, 1e-9)
    barrier(env)
    logger.log(it, event="stopped" if stopped_by else "finished", seconds=round(elapsed, 3),
               images_per_s=ips, iterations=done)
    logger.close()
    if stopped_by is not None:
        log(f"stopped by {stopped_by} at iteration {it}/{total}; checkpoint saved to "
            f"{ckpt_path}; rerun the same command to resume")
        return stop.exit_code()
    result = result_record(arch, cfg, info, it, best, last_eval, prior_time + elapsed)
    if env.is_main:
        files.write_json_atomic(result, os.path.join(save_dir, "result.json"))
    log(f"finished {total} iterations ({done} in this run, {ips:.1f} images/s); best "
        f"valid_acc_top1 {best['top1']:.4f} valid_acc_top5 {best['top5']:.4f} at iteration "
        f"{best['iters']} -> {best_path}")
    return 0


def _batches(loader):
    """Iterate `loader` without touching the global CPU RNG stream.

    Starting a DataLoader iterator draws a base seed from the global RNG, which dropout
    also uses on CPU; a resumed run starts its iterators at other points than an
    uninterrupted one, so drawing it outside the stream keeps the two runs identical.
    """
    it = iter(loader)
    with torch.random.fork_rng(devices=[]):
        first = next(it, None)
    if first is None:
        return
    yield first
    yield from it


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = setup(args.local_rank, args.device, timeout_s=args.dist_timeout)
    try:
        with collective_guard(env):
            if args.eval:
                return run_eval(args, env)
            save_dir = save_dir_of(args)
            if env.is_main:  # before any work: an output folder that cannot be written
                files.check_output_dir(save_dir, "the --save folder")
            # One run per eval-NAME/ (rank 0 holds the lock), released however we exit.
            with OutputLock(os.path.join(save_dir, LOCK_NAME), what=save_dir,
                            enabled=env.is_main, log=_note):
                if env.is_main:
                    files.clean_stale_temps(*(os.path.join(save_dir, n) for n in OUTPUT_FILES),
                                           log=_note)
                return train(args, env)
    finally:
        cleanup(env)


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
