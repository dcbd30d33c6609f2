"""Stage 1, run: set up the supernet training a SupernetConfig describes and run the loop.

    exit_code = run_supernet(config)   # processes, output lock, data, resume, loop

Rerunning the same command resumes from --checkpoint (a finished run says so and exits
0); the resume check refuses a checkpoint of another run in one line.
"""
from __future__ import annotations

import os

import torch

from utils import files
from utils.checkpoints import io as ckpt
from utils.checkpoints.lock import OutputLock
from utils.cli.common import UserError, config_from_args
from utils.cli.config_file import settings_path_for, space_settings, write_settings
from utils.data.datasets import DEFAULT_DATASET
from utils.data.identity import check_resume_data, loader_fingerprint
from utils.data.loaders import augment_kwargs, build_train_loader
from utils.dist import DistEnv, broadcast_tensors, cleanup, collective_guard, describe, setup
from utils.logs import get_logger, setup_logging
from utils.spaces import SpaceConfig, get_space
from utils.train.amp import Amp, resolve_channels_last
from utils.train.config import SupernetConfig, resume_noted_fields
from utils.train.loop import LoopSpec, note, train_model
from utils.train.meters import metrics_path_for
from utils.train.rng import seed_everything, set_rng_state
from utils.train.state import check_run_settings, report_changed_hyper
from utils.train.supernet import SupernetTask, SupernetTrainer

log = get_logger(__name__)


def describe_trainable(t: dict) -> str:
    bns = "the indicator BNs" if t["bn_params"] == "indicator" else "every BN"
    return bns + (" and the classifier" if t["train_classifier"] else "")


def _dataset_note(spec) -> str:
    """" (--dataset NAME)" in the data line, for datasets other than the default."""
    return "" if spec.name == DEFAULT_DATASET else f" (--dataset {spec.name})"


def check_resume(state: dict, path: str, space_cfg: SpaceConfig, config: SupernetConfig,
                 env: DistEnv) -> None:
    """Refuse a checkpoint that is not this run's, with a one-line reason."""
    if state.get("kind") != "supernet":
        what = state.get("kind") or "not written by this project's supernet training"
        raise UserError(f"{path} is not a supernet checkpoint of this project ({what}); "
                        f"use another --checkpoint path")
    ckpt.check_config(state["config"], space_cfg, path)
    if bool(state.get("train_all")) != config.train_all:
        saved = "--train-all (SPOS)" if state.get("train_all") else "BN-only (BN-NAS)"
        asked = "--train-all (SPOS)" if config.train_all else "BN-only (BN-NAS)"
        raise UserError(f"checkpoint {path} is a {saved} supernet but this run is {asked}")
    saved_trainable = state.get("trainable") or dict(bn_params="indicator",
                                                     train_classifier=False)
    if saved_trainable != config.trainable():
        raise UserError(f"checkpoint {path} trained {describe_trainable(saved_trainable)} but "
                        f"this run trains {describe_trainable(config.trainable())}: use the "
                        f"same --bn-params/--train-classifier or another --checkpoint")
    check_run_settings(state, config, path, "--checkpoint")
    if env.is_main:
        report_changed_hyper(state.get("args") or {}, config, resume_noted_fields(config), note)


def run_supernet(config: SupernetConfig) -> int:
    """Start the processes, hold --checkpoint's lock, train; returns the exit code."""
    env = setup(config.local_rank, config.device, timeout_s=config.dist_timeout)
    setup_logging(rank=env.rank)
    try:
        with collective_guard(env):
            if env.is_main:  # before any work: a path that cannot be written fails now
                files.check_output_path(config.checkpoint, "--checkpoint")
            # One run per checkpoint (rank 0 holds the lock), released however we exit.
            with OutputLock(config.checkpoint + ".lock", what=config.checkpoint,
                            enabled=env.is_main, log=note):
                if env.is_main:
                    files.clean_stale_temps(config.checkpoint,
                                            metrics_path_for(config.checkpoint),
                                            settings_path_for(config.checkpoint), log=note)
                return train_supernet(config, env)
    finally:
        cleanup(env)


def train_supernet(config: SupernetConfig, env: DistEnv) -> int:
    seed_everything(config.seed, env.rank)
    loader = build_train_loader(root=config.train_dir, input_size=config.input_size,
                                batch_size=config.batch_size, env=env, workers=config.workers,
                                seed=config.seed, input_format=config.input_format,
                                classes=config.classes, dataset=config.dataset,
                                **augment_kwargs(config.args))
    space_cfg = config_from_args(config, classes=loader.num_classes)
    space = get_space(space_cfg)
    config = config.resolved(steps_per_epoch=loader.steps_per_epoch)
    spe, total, path = config.steps_per_epoch, config.total_iters, config.checkpoint
    num_samples = len(loader.dataset)
    # What the checkpoint records of its data: class names (label i = classes[i]) and a
    # fingerprint (per-class counts, sha256 of the file list) that resuming must match.
    identity = dict(classes=list(loader.classes),
                    data=loader_fingerprint(config.train_dir, loader))

    state = None
    if os.path.exists(path):
        state = ckpt.load(path)
        check_resume(state, path, space_cfg, config, env)
        check_resume_data(state.get("data"), identity["data"], path, config.allow_data_change,
                          note if env.is_main else (lambda m: None))
        if int(state["iter"]) >= total:
            log.info(f"{path}: supernet training already finished "
                     f"({state['iter']}/{total} iterations); nothing to do")
            return 0

    amp = Amp(config.amp, env.device)
    channels_last = resolve_channels_last(config.channels_last, env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The frozen random weights ARE the BN-NAS supernet: every rank must build the same
    # ones, so initialise from the run seed alone, then copy rank 0's to be certain.
    torch.manual_seed(config.seed)
    net = space.supernet().to(env.device)
    broadcast_tensors(list(net.parameters()) + list(net.buffers()), env)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    trainer = SupernetTrainer(space, net, env, train_all=config.train_all, seed=config.seed,
                              total_iters=total, lr=config.learning_rate, min_lr=config.min_lr,
                              momentum=config.momentum, weight_decay=config.weight_decay,
                              grad_clip=config.grad_clip, label_smooth=config.label_smooth,
                              amp=amp, bn_params=config.bn_params,
                              train_classifier=config.train_classifier)
    start, prior_time = 0, 0.0
    if state is not None:
        net.load_state_dict(state["state_dict"])
        trainer.load_state_dict(state)
        set_rng_state(state.get("rng") or {})
        start, prior_time = int(state["iter"]), float(state.get("train_time", 0.0))

    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    mode = ("SPOS (all parameters)" if config.train_all
            else f"BN-NAS ({describe_trainable(config.trainable())})")
    log.info(f"supernet: {space_cfg.describe()}\n"
             f"mode: {mode}; {n_train:,} trainable of "
             f"{sum(p.numel() for p in net.parameters()):,} parameters\n"
             f"data: {num_samples} images{_dataset_note(loader.spec)}, "
             f"{loader.num_classes} classes, "
             f"{spe} iterations/epoch, batch {config.batch_size} "
             f"({loader.batch_size_per_rank}/process); {describe(env)}; amp={config.amp}; "
             f"channels_last={channels_last}\n"
             + (f"resuming from {path} at iteration {start}/{total}" if start
                else f"training {total} iterations -> {path}"))

    if env.is_main:  # the resolved settings, beside the checkpoint: --config reruns them
        write_settings(config.args, settings_path_for(path), resolved=space_settings(space_cfg),
                       notes=[f"{total} iterations of {spe} per epoch, {num_samples} "
                              f"images, {loader.num_classes} classes"])
    metrics = metrics_path_for(path)
    if state is not None and env.is_main:
        dropped = files.trim_metrics(metrics, start)
        if dropped:
            note(f"note: dropped {dropped} row(s) of {metrics} logged after iteration "
                 f"{start} (the checkpoint's), so they are not logged twice")
    net.train()
    task = SupernetTask(trainer, loader, env, config=config, space_cfg=space_cfg,
                        num_samples=num_samples, identity=identity,
                        channels_last=channels_last, dump=[] if config.dump_dir else None)
    spec = LoopSpec(total_iters=total, steps_per_epoch=spe, batch_size=config.batch_size,
                    batch_per_rank=loader.batch_size_per_rank, report_freq=config.report_freq,
                    checkpoint=path, metrics_path=metrics,
                    tensorboard_dir=metrics[: -len(".metrics.jsonl")] + ".tb", start=start,
                    resumed=state is not None, prior_time=prior_time,
                    stop_after=config.stop_after, save_freq=config.save_freq,
                    epoch_summary=True, desc="supernet")
    result = train_model(task, spec, env)
    if result.stopped_by is None:
        log.info(f"finished {total} iterations ({result.done} in this run) in "
                 f"{result.seconds:.1f} s, {result.images_per_s:.1f} images/s; "
                 f"checkpoint: {path}")
    return result.exit_code


__all__ = ["run_supernet", "train_supernet", "check_resume", "describe_trainable"]
