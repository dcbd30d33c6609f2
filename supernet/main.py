"""Stage 1: train the one-shot supernet, BN-NAS style (only indicator BNs) or SPOS (--train-all).

    torchrun --nproc_per_node=8 supernet/main.py --train_dir /data/imagenet/train
    python3 -m torch.distributed.launch --nproc_per_node=8 supernet/main.py --train_dir ...
    python3 supernet/main.py --train_dir data/imagefolder/train --input-size 32 ...

Rerunning the same command resumes from --checkpoint (a finished run says so and exits 0).
Settings can come from a YAML file (`--config configs/bnnas_supernet_imagenet.yaml`, flags
override it); every run writes its resolved settings beside the checkpoint
(checkpoint.config.yaml), which `--config` reruns.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


import torch

from utils import files
from utils.checkpoints import io as ckpt
from utils.cli.config_file import add_config_arg, settings_path_for, space_settings, write_settings
from utils.cli.common import (ArgumentParser, UserError, add_space_args, batch_size_int,
                       config_from_args, fraction, main_guard, momentum_float, nonneg_float,
                       nonneg_int, positive_int, seed_int)
from utils.data.loaders import add_augment_args, add_data_args, augment_kwargs, build_train_loader
from utils.data.identity import check_resume_data, loader_fingerprint
from utils.dist import (DistEnv, add_launcher_args, all_reduce_sum, barrier, broadcast_tensors,
                        cleanup, collective_guard, describe, maybe_freeze, setup)
from utils.train.engine import (Amp, GracefulStop, LossGuard, MetricsLogger, NonFiniteError,
                          ProgressBar, Timer, add_amp_args, metrics_path_for,
                          report_changed_hyper,
                          resolve_channels_last, rng_state, seed_everything, set_rng_state)
from utils.checkpoints.lock import OutputLock
from utils.spaces import get_space
from utils.train.supernet import BN_PARAM_CHOICES, SupernetTrainer

# The original's defaults (docs/method.md, "Recipes"): BN-NAS trains 10 epochs, SPOS 100.
EPOCHS_BN_NAS, EPOCHS_SPOS = 10, 100
# Settings that fix which samples, paths and LR each iteration gets: a checkpoint made with
# other values cannot be continued exactly, so resuming with them changed is refused.
RUN_DEFINING = ("seed", "batch_size", "total_iters", "steps_per_epoch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Train a BN-NAS supernet (indicator BNs only; --train-all for SPOS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_dir", "--train-dir", dest="train_dir", default=None,
                   help="ImageFolder training set (<dir>/<class>/<image>)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=batch_size_int,
                   default=512,
                   help="GLOBAL batch size, split evenly over the processes")
    p.add_argument("--learning_rate", "--learning-rate", dest="learning_rate",
                   type=nonneg_float, default=0.25)
    p.add_argument("--min_lr", "--min-lr", dest="min_lr", type=nonneg_float, default=5e-4,
                   help="final LR of the per-iteration linear decay")
    p.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum, [0, 1)")
    p.add_argument("--weight_decay", "--weight-decay", dest="weight_decay", type=nonneg_float,
                   default=4e-5, help="on every conv weight and the classifier's weight and "
                                      "bias (the original's decay group), never on BN")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"default {EPOCHS_BN_NAS} (BN-NAS), {EPOCHS_SPOS} with --train-all")
    p.add_argument("--total_iters", "--total-iters", dest="total_iters", type=positive_int,
                   default=None, help="number of iterations; overrides --epochs")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds paths, data order and augmentation (0 <= seed < 2**32)")
    p.add_argument("--grad_clip", "--grad-clip", dest="grad_clip", type=nonneg_float,
                   default=5.0, help="clip gradients BY VALUE (0 = off)")
    p.add_argument("--label_smooth", "--label-smooth", dest="label_smooth", type=fraction,
                   default=0.1, help="label smoothing, [0, 1)")
    p.add_argument("--report_freq", "--report-freq", dest="report_freq", type=positive_int,
                   default=50,
                   help="iterations between progress/metrics updates (the only host syncs)")
    p.add_argument("--train-all", "--train_all", dest="train_all", action="store_true",
                   help="SPOS baseline: train every parameter (default: BN-NAS, only the "
                        "indicator BN gamma/beta of each candidate op)")
    g = p.add_argument_group("ablations of BN-only training (not the original's)")
    g.add_argument("--bn-params", "--bn_params", dest="bn_params", default="indicator",
                   choices=BN_PARAM_CHOICES,
                   help="which BN affine parameters train: indicator = the last BN of each "
                        "candidate op (the original); all = every BN's gamma and beta")
    g.add_argument("--train-classifier", "--train_classifier", dest="train_classifier",
                   action="store_true", help="also train the classifier's weight and bias "
                                             "(the original keeps it frozen at init)")
    p.add_argument("--checkpoint", default="./checkpoint.pth.tar",
                   help="checkpoint to write, and to resume from when it exists")
    p.add_argument("--allow-data-change", "--allow_data_change", dest="allow_data_change",
                   action="store_true",
                   help="resume although --train_dir is not the data the checkpoint was "
                        "trained on (images added or removed; the class names must match)")
    p.add_argument("--save-freq", "--save_freq", dest="save_freq", type=nonneg_int, default=0,
                   help="also save every N iterations (0: only at epoch ends and the end)")
    p.add_argument("--stop-after", "--stop_after", dest="stop_after", type=nonneg_int, default=0,
                   help="save and exit after N iterations in this invocation (time-limited "
                        "jobs); rerun to continue")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (one GPU per process)")
    p.add_argument("--dump-dir", dest="dump_dir", default=None, help=argparse.SUPPRESS)
    add_data_args(p)
    add_augment_args(p)
    add_amp_args(p)
    add_space_args(p, classes_default=None)
    add_launcher_args(p)
    add_config_arg(p, "supernet/main.py")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = EPOCHS_SPOS if args.train_all else EPOCHS_BN_NAS
    if args.train_all and (args.bn_params != "indicator" or args.train_classifier):
        raise UserError("--bn-params and --train-classifier choose what a BN-only supernet "
                        "trains; with --train-all every parameter trains already")
    # Numeric ranges are checked while parsing (the utils.cli.common types above).
    return args


def _saved_args(args: argparse.Namespace) -> dict:
    # Plain values only, so the checkpoint stays loadable with weights_only=True.
    return {k: v for k, v in vars(args).items()
            if v is None or isinstance(v, (bool, int, float, str))}


def trainable_of(args: argparse.Namespace) -> dict:
    return dict(bn_params=args.bn_params, train_classifier=bool(args.train_classifier))


def _describe_trainable(t: dict) -> str:
    bns = "the indicator BNs" if t["bn_params"] == "indicator" else "every BN"
    return bns + (" and the classifier" if t["train_classifier"] else "")


def check_resume(state: dict, path: str, cfg, run: dict, args: argparse.Namespace,
                 env: DistEnv) -> None:
    """Refuse a checkpoint that is not this run's, with a one-line reason."""
    if state.get("kind") != "supernet":
        what = state.get("kind") or "not written by this project's supernet training"
        raise UserError(f"{path} is not a supernet checkpoint of this project ({what}); "
                        f"use another --checkpoint path")
    ckpt.check_config(state["config"], cfg, path)
    if bool(state.get("train_all")) != args.train_all:
        saved = "--train-all (SPOS)" if state.get("train_all") else "BN-only (BN-NAS)"
        asked = "--train-all (SPOS)" if args.train_all else "BN-only (BN-NAS)"
        raise UserError(f"checkpoint {path} is a {saved} supernet but this run is {asked}")
    saved_trainable = state.get("trainable") or dict(bn_params="indicator",
                                                     train_classifier=False)
    if saved_trainable != trainable_of(args):
        raise UserError(f"checkpoint {path} trained {_describe_trainable(saved_trainable)} but "
                        f"this run trains {_describe_trainable(trainable_of(args))}: use the "
                        f"same --bn-params/--train-classifier or another --checkpoint")
    diffs = [f"{k}: {state.get(k)} vs {run[k]}" for k in RUN_DEFINING if state.get(k) != run[k]]
    if diffs:
        raise UserError(f"checkpoint {path} was made with other run settings "
                        f"({'; '.join(diffs)}; checkpoint vs now): rerun with the original "
                        f"settings or use another --checkpoint")
    old = state.get("args") or {}
    if env.is_main:
        report_changed_hyper(old, args, ("learning_rate", "min_lr", "momentum", "weight_decay",
                                         "grad_clip", "label_smooth", "amp"),
                             lambda m: print(m, file=sys.stderr))


def save(path: str, trainer: SupernetTrainer, cfg, args, run: dict, it: int, env: DistEnv,
         extra: dict) -> None:
    if not env.is_main:
        return
    state = dict(kind="supernet", config=cfg.to_dict(),
                 state_dict=ckpt.clean_state_dict(trainer.net.state_dict()),
                 train_all=args.train_all, trainable=trainable_of(args), iter=it,
                 epoch=it // run["steps_per_epoch"],
                 seed=args.seed, total_iters=run["total_iters"],
                 steps_per_epoch=run["steps_per_epoch"], batch_size=args.batch_size,
                 sampler=dict(seed=args.seed, epoch=it // run["steps_per_epoch"],
                              step=it % run["steps_per_epoch"],
                              steps_per_epoch=run["steps_per_epoch"],
                              global_batch=args.batch_size, num_samples=run["num_samples"]),
                 rng=rng_state(), args=_saved_args(args), finished=it >= run["total_iters"],
                 **trainer.state_dict(), **extra)
    ckpt.save_atomic(state, path)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = setup(args.local_rank, args.device, timeout_s=args.dist_timeout)
    try:
        with collective_guard(env):
            if env.is_main:  # before any work: a path that cannot be written fails now
                files.check_output_path(args.checkpoint, "--checkpoint")
            # One run per checkpoint (rank 0 holds the lock), released however we exit.
            with OutputLock(args.checkpoint + ".lock", what=args.checkpoint,
                            enabled=env.is_main, log=_note):
                if env.is_main:
                    files.clean_stale_temps(args.checkpoint, metrics_path_for(args.checkpoint),
                                           settings_path_for(args.checkpoint), log=_note)
                return train(args, env)
    finally:
        cleanup(env)


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(args: argparse.Namespace, env: DistEnv) -> int:
    seed_everything(args.seed, env.rank)
    loader = build_train_loader(args.train_dir, args.input_size, args.batch_size, env,
                                args.workers, args.seed, input_format=args.input_format,
                                classes=args.classes, **augment_kwargs(args))
    cfg = config_from_args(args, classes=loader.num_classes)
    space = get_space(cfg)
    spe = loader.steps_per_epoch
    run = dict(seed=args.seed, batch_size=args.batch_size, steps_per_epoch=spe,
               total_iters=args.total_iters if args.total_iters else args.epochs * spe,
               num_samples=len(loader.dataset))
    total = run["total_iters"]
    # What the checkpoint records of its data: class names (label i = classes[i]) and a
    # fingerprint (per-class counts, sha256 of the file list) that resuming must match.
    identity = dict(classes=list(loader.classes),
                    data=loader_fingerprint(args.train_dir, loader))

    state = None
    if os.path.exists(args.checkpoint):
        state = ckpt.load(args.checkpoint)
        check_resume(state, args.checkpoint, cfg, run, args, env)
        check_resume_data(state.get("data"), identity["data"], args.checkpoint,
                          args.allow_data_change, _note if env.is_main else (lambda m: None))
        if int(state["iter"]) >= total:
            if env.is_main:
                print(f"{args.checkpoint}: supernet training already finished "
                      f"({state['iter']}/{total} iterations); nothing to do", flush=True)
            return 0

    amp = Amp(args.amp, env.device)
    channels_last = resolve_channels_last(args.channels_last, env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The frozen random weights ARE the BN-NAS supernet: every rank must build the same
    # ones, so initialise from the run seed alone, then copy rank 0's to be certain.
    torch.manual_seed(args.seed)
    net = space.supernet().to(env.device)
    broadcast_tensors(list(net.parameters()) + list(net.buffers()), env)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    trainer = SupernetTrainer(space, net, env, train_all=args.train_all, seed=args.seed,
                              total_iters=total, lr=args.learning_rate, min_lr=args.min_lr,
                              momentum=args.momentum, weight_decay=args.weight_decay,
                              grad_clip=args.grad_clip, label_smooth=args.label_smooth, amp=amp,
                              bn_params=args.bn_params, train_classifier=args.train_classifier)
    start, prior_time = 0, 0.0
    if state is not None:
        net.load_state_dict(state["state_dict"])
        trainer.load_state_dict(state)
        set_rng_state(state.get("rng") or {})
        start, prior_time = int(state["iter"]), float(state.get("train_time", 0.0))

    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if env.is_main:
        mode = ("SPOS (all parameters)" if args.train_all
                else f"BN-NAS ({_describe_trainable(trainable_of(args))})")
        print(f"supernet: {cfg.describe()}\n"
              f"mode: {mode}; {n_train:,} trainable of "
              f"{sum(p.numel() for p in net.parameters()):,} parameters\n"
              f"data: {run['num_samples']} images, {loader.num_classes} classes, "
              f"{spe} iterations/epoch, batch {args.batch_size} "
              f"({loader.batch_size_per_rank}/process); {describe(env)}; amp={args.amp}; "
              f"channels_last={channels_last}\n"
              + (f"resuming from {args.checkpoint} at iteration {start}/{total}" if start
                 else f"training {total} iterations -> {args.checkpoint}"), flush=True)

    if env.is_main:  # the resolved settings, beside the checkpoint: --config reruns them
        write_settings(args, settings_path_for(args.checkpoint), resolved=space_settings(cfg),
                       notes=[f"{total} iterations of {spe} per epoch, {run['num_samples']} "
                              f"images, {loader.num_classes} classes"])
    metrics = metrics_path_for(args.checkpoint)
    if state is not None and env.is_main:
        dropped = files.trim_metrics(metrics, start)
        if dropped:
            _note(f"note: dropped {dropped} row(s) of {metrics} logged after iteration "
                  f"{start} (the checkpoint's), so they are not logged twice")
    logger = MetricsLogger(metrics, env, tensorboard_dir=metrics[: -len(".metrics.jsonl")] + ".tb")
    dump: list | None = [] if args.dump_dir else None
    bar = ProgressBar(total, env, desc="supernet", initial=start)
    stop = GracefulStop(env)
    net.train()
    it, timer = start, Timer()
    window_start, window_it = time.perf_counter(), start
    stopped_by: str | None = None
    # Running sums stay on the device (loss*n, correct); read only at report points.
    sums = torch.zeros(2, device=env.device)
    epoch_sums = torch.zeros(2, device=env.device)
    per_rank = loader.batch_size_per_rank

    guard = LossGuard(env, start)  # nan/inf losses, watched on the device
    saved_at = [start if state is not None else None]

    def ensure_finite(weights: bool = False) -> None:
        """Stop at once on a nan/inf loss (or, before a save, weights): never report or
        save a diverged state; the checkpoint on disk keeps the last good one."""
        what = guard.divergence(trainer.net, it, total, weights)
        if what is None:
            return
        kept = (f"{args.checkpoint} keeps iteration {saved_at[0]}, the last good state"
                if saved_at[0] is not None else "nothing was saved")
        logger.log(it, event="diverged", reason=what)
        logger.close()
        raise NonFiniteError(f"training diverged: {what} ({kept}); lower --learning_rate "
                             f"or check the data")

    def checkpoint_now() -> None:
        ensure_finite(weights=True)
        save(args.checkpoint, trainer, cfg, args, run, it, env,
             dict(train_time=prior_time + timer.elapsed(), **identity))
        saved_at[0] = it

    def reduced(t: torch.Tensor, steps: int) -> tuple[float, float]:
        loss_sum, correct = all_reduce_sum(t.clone(), env).tolist()
        n = max(1, steps * args.batch_size)
        return loss_sum / n, 100.0 * correct / n

    try:
        with stop:
            while it < total and stopped_by is None:
                epoch, step0 = divmod(it, spe)
                loader.set_epoch(epoch, step0)
                epoch_first = it
                for batch in loader:
                    x, y = loader.prepare(batch, env.device, channels_last)
                    if dump is not None:
                        dump.append(loader.sampler.batch_indices(epoch, it % spe))
                    maybe_freeze(env, it)
                    loss, correct = trainer.step(x, y, it)
                    guard.step(loss)
                    sums += torch.stack([loss.float() * per_rank, correct.float()])
                    it += 1
                    end_of_epoch = it % spe == 0 or it == total
                    if it % args.report_freq == 0 or end_of_epoch:
                        ensure_finite()
                        epoch_sums += sums
                        loss_v, top1 = reduced(sums, it - window_it)
                        sums.zero_()
                        now = time.perf_counter()
                        ips = (it - window_it) * args.batch_size / max(now - window_start, 1e-9)
                        window_start, window_it = now, it
                        values = dict(loss=loss_v, top1=top1, lr=trainer.schedule.lr_at(it - 1),
                                      img_s=ips)
                        bar.set_position(it, **values)
                        logger.log(it, epoch=epoch, **values)
                    if end_of_epoch:
                        loss_v, top1 = reduced(epoch_sums, it - epoch_first)
                        epoch_sums.zero_()
                        bar.write(f"epoch {epoch + 1}: iteration {it}/{total} loss {loss_v:.4f} "
                                  f"top-1 {top1:.2f}%")
                        logger.log(it, epoch=epoch, epoch_loss=loss_v, epoch_top1=top1)
                        checkpoint_now()
                    elif args.save_freq and it % args.save_freq == 0:
                        checkpoint_now()
                    if it >= total:
                        break
                    stopped_by = stop.reason(it, start, args.stop_after)
                    if stopped_by is not None:
                        checkpoint_now()
                        break
    finally:
        bar.close()
    elapsed = timer.elapsed()
    done = it - start
    ips = done * args.batch_size / max(elapsed, 1e-9)
    if dump is not None:
        os.makedirs(args.dump_dir, exist_ok=True)
        torch.save(dict(indices=dump, state_dict=net.state_dict(), iter=it),
                   os.path.join(args.dump_dir, f"rank{env.rank}.pt"))
    barrier(env)
    if env.is_main:
        logger.log(it, event="stopped" if stopped_by else "finished", seconds=round(elapsed, 3),
                   images_per_s=ips, iterations=done)
        if stopped_by is not None:
            print(f"stopped by {stopped_by} at iteration {it}/{total}; checkpoint saved to "
                  f"{args.checkpoint}; rerun the same command to resume", flush=True)
        else:
            print(f"finished {total} iterations ({done} in this run) in {elapsed:.1f} s, "
                  f"{ips:.1f} images/s; checkpoint: {args.checkpoint}", flush=True)
    logger.close()
    if stopped_by is not None and stop.requested:
        return stop.exit_code()
    return 0


if __name__ == "__main__":
    sys.exit(main())
