"""Stage 3, run: set up the retrain a RetrainConfig describes and run the loop (or, with
--eval, evaluate a checkpoint: utils/train/retrain_eval.py).

    exit_code = run_retrain(config)   # processes, eval-NAME/ lock and log, data, resume, loop

Everything goes to eval-NAME/ (checkpoint.pth.tar, best.pth.tar, metrics.jsonl, log.txt,
result.json); rerunning the same command resumes (a finished run reports its result and
exits 0); the resume check refuses a checkpoint of another run in one line.
"""
from __future__ import annotations

import os

import torch

from utils import files
from utils.checkpoints import io as ckpt
from utils.checkpoints.lock import OutputLock
from utils.checkpoints.subnet import load_subnet_state
from utils.cli.config_file import space_settings, write_settings
from utils.data.datasets import DEFAULT_DATASET, get_dataset, recorded_dataset
from utils.data.identity import check_resume_data, label_map, loader_fingerprint
from utils.data.loaders import (DEFAULT_INPUT_FORMAT, DEFAULT_RESIZE_MODE, augment_kwargs,
                                build_train_loader, build_val_loader)
from utils.data.transforms import recorded_crop_pct
from utils.dist import DistEnv, all_gather_objects, cleanup, collective_guard, describe, setup
from utils.errors import UserError
from utils.flops.table import load_table
from utils.logs import get_logger, setup_logging
from utils.spaces import SpaceConfig, get_space
from utils.train.amp import Amp, resolve_channels_last
from utils.train.config import RetrainConfig, resume_noted_fields
from utils.train.loop import LoopSpec, note, train_model
from utils.train.retrain_arch import choose_arch, describe_arch
from utils.train.retrain_eval import evaluate_checkpoint
from utils.train.retrain_outputs import (LOCK_NAME, LOG_NAME, OUTPUT_FILES, SETTINGS_NAME,
                                         data_note, data_settings, fix_result, reconcile_best,
                                         report_finished, result_record, save_dir_of)
from utils.train.rng import seed_everything, set_rng_state
from utils.train.state import check_run_settings, report_changed_hyper
from utils.train.subnet import SubnetTask, SubnetTrainer

log = get_logger(__name__)


def _say(text: str) -> None:
    """Log a block line by line: the log file stamps each line."""
    for line in text.splitlines():
        log.info(line)


def check_resume(state: dict, path: str, space_cfg: SpaceConfig, arch,
                 config: RetrainConfig) -> None:
    """Refuse a checkpoint that is not this run's, with a one-line reason; `config` is
    resolved (run length, input format, resize mode)."""
    if state.get("kind") != "subnet":
        what = state.get("kind") or "not written by this project's retraining"
        raise UserError(f"{path} is not a subnet checkpoint of this project ({what}); "
                        f"use another --save name")
    ckpt.check_config(state["config"], space_cfg, path)
    saved_arch = tuple(int(a) for a in state["arch"])
    if saved_arch != tuple(arch):
        fmt = " ".join(map(str, saved_arch))
        raise UserError(f"checkpoint {path} is for architecture '{fmt}', not "
                        f"'{' '.join(map(str, arch))}': use another --save name")
    check_run_settings(state, config, path, "--save name")
    old = state.get("args") or {}
    # The optimizer's groups depend on which parameters are decayed: checkpoints from
    # before --decay-params decayed the classifier's weight too.
    saved_decay = old.get("decay_params") or "conv+linear-weight"
    if saved_decay != config.decay_params:
        raise UserError(f"checkpoint {path} was trained with --decay-params {saved_decay}; "
                        f"resume with --decay-params {saved_decay} or use another --save")
    report_changed_hyper(old, config, resume_noted_fields(config), log.info)


def check_val_images(val_loader, env: DistEnv) -> int:
    """Open every validation image's header (each rank its share) before training, so a
    corrupt one stops the run now, not after the first epoch; returns how many."""
    bad = val_loader.first_unreadable(env.rank, env.world_size)
    found = [m for m in all_gather_objects(bad, env) if m]
    if found:
        raise UserError(f"{found[0]} (--test_dir, checked before training)")
    return val_loader.num_samples


def run_retrain(config: RetrainConfig) -> int:
    """Start the processes; --eval, or hold eval-NAME/'s lock and train; the exit code."""
    env = setup(config.local_rank, config.device, timeout_s=config.dist_timeout)
    try:
        with collective_guard(env):
            if config.eval:
                setup_logging(rank=env.rank)
                return evaluate_checkpoint(config, env)
            save_dir = save_dir_of(config)
            if env.is_main:  # before any work: an output folder that cannot be written
                files.check_output_dir(save_dir, "the --save folder")
            # One run per eval-NAME/ (rank 0 holds the lock), released however we exit.
            with OutputLock(os.path.join(save_dir, LOCK_NAME), what=save_dir,
                            enabled=env.is_main, log=note):
                if env.is_main:
                    files.clean_stale_temps(*(os.path.join(save_dir, n) for n in OUTPUT_FILES),
                                            log=note)
                # Every line is kept in eval-NAME/log.txt too, timestamped (the file is
                # made at the first line: a run refused before logging leaves none).
                setup_logging(rank=env.rank, file=os.path.join(save_dir, LOG_NAME))
                return train_subnet(config, env)
    finally:
        setup_logging(rank=env.rank)  # let go of eval-NAME/log.txt
        cleanup(env)


def train_subnet(config: RetrainConfig, env: DistEnv) -> int:
    save_dir = save_dir_of(config)
    ckpt_path, best_path = (os.path.join(save_dir, n)
                            for n in ("checkpoint.pth.tar", "best.pth.tar"))
    state = ckpt.load(ckpt_path) if os.path.exists(ckpt_path) else None
    # Resuming without --dataset / --input-format / --resize-mode / --val-crop-pct keeps
    # what the run was started with; one resize for training crops and validation; all
    # recorded in the checkpoint's args.
    saved = (state or {}).get("args") or {}
    config.resolve(dataset=config.dataset or recorded_dataset(saved, ckpt_path),
                   val_crop_pct=(config.val_crop_pct if config.val_crop_pct is not None
                                 else recorded_crop_pct(saved)))
    spec = get_dataset(config.dataset)
    for flag, value in (("--train_dir", config.train_dir), ("--test_dir", config.test_dir)):
        spec.require_root(value, flag)
    arch, space_cfg, source = choose_arch(config, spec.count_classes(config.train_dir))
    space = get_space(space_cfg)
    config.input_format = config.input_format or saved.get("input_format") or \
        DEFAULT_INPUT_FORMAT
    config.resolve(resize_mode=config.resize_mode or saved.get("resize_mode")
                   or DEFAULT_RESIZE_MODE)
    loader = build_train_loader(root=config.train_dir, input_size=space_cfg.input_size,
                                batch_size=config.batch_size, env=env, workers=config.workers,
                                seed=config.seed, input_format=config.input_format,
                                classes=space_cfg.classes, dataset=spec,
                                **augment_kwargs(config.args))
    val_loader = build_val_loader(root=config.test_dir, input_size=space_cfg.input_size,
                                  batch_size_per_rank=loader.batch_size_per_rank, env=env,
                                  workers=config.workers, input_format=config.input_format,
                                  classes=space_cfg.classes, resize_mode=config.resize_mode,
                                  dataset=spec, crop_pct=config.val_crop_pct)
    unknown = [c for c in val_loader.classes if c not in loader.classes]
    if unknown:
        kind = "class folder" if spec.name == DEFAULT_DATASET else "class"
        raise UserError(f"--test_dir has {kind} '{unknown[0]}' that --train_dir lacks, "
                        f"so its images have no label")
    # ImageFolder numbers classes by sorted folder name: validation labels follow the
    # training folder's names (a subset of its classes is fine).
    val_loader.relabel(label_map(val_loader.classes, loader.classes, space_cfg.classes,
                                 "--test_dir", "--train_dir"))
    # Recorded in every checkpoint: class names (output i = classes[i]) and a fingerprint
    # of the training data (per-class counts, sha256 of the file list) resuming must match.
    identity = dict(classes=list(loader.classes),
                    data=loader_fingerprint(config.train_dir, loader))
    config = config.resolved(steps_per_epoch=loader.steps_per_epoch)
    spe, total = config.steps_per_epoch, config.total_iters
    eval_freq = config.eval_freq or spe
    config.resolve(dropout=space.default_dropout if config.dropout is None else config.dropout)
    pending = False  # the checkpoint was saved at a validation point it did not validate
    if state is not None:
        check_resume(state, ckpt_path, space_cfg, arch, config)
        check_resume_data(state.get("data"), identity["data"], ckpt_path,
                          config.allow_data_change, log.info)
        pending = bool(state.get("eval_pending"))
        if int(state["iters"]) >= total and not pending:
            best = reconcile_best(state, ckpt_path, best_path) if env.is_main else None
            if env.is_main:
                fix_result(save_dir, state, arch, space_cfg, best)
            report_finished(state, ckpt_path, best)
            return 0
    n_checked = check_val_images(val_loader, env)

    amp = Amp(config.amp, env.device)
    channels_last = resolve_channels_last(config.channels_last, env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(config.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    net = space.subnet(arch, dropout=config.dropout)
    seed_everything(config.seed, env.rank)  # per-rank dropout masks
    trainer = SubnetTrainer(net, env, total_iters=total, lr=config.learning_rate,
                            momentum=config.momentum, weight_decay=config.weight_decay,
                            grad_clip=config.grad_clip, label_smooth=config.label_smooth,
                            amp=amp, channels_last=channels_last,
                            decay_policy=config.decay_params)
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
            best = reconcile_best(state, ckpt_path, best_path)
        last_eval = dict(state.get("last_eval") or {})

    _say(describe_arch(space, arch, space_cfg, source) + "\n"
         f"data: {len(loader.dataset)} training images, {loader.num_classes} classes, "
         f"{val_loader.num_samples} validation images (all {n_checked} checked to open); "
         f"input {config.input_format}; resize {config.resize_mode}"
         f"{data_note(spec, config.val_crop_pct)}\n"
         f"batch {config.batch_size} global, {loader.batch_size_per_rank} per process; "
         f"{spe} iterations/epoch; {describe(env)}; amp={config.amp}; "
         f"channels_last={channels_last}; dropout {config.dropout}\n"
         f"SGD lr {config.learning_rate} (linear to 0) momentum {config.momentum} wd "
         f"{config.weight_decay} ({config.decay_params} weights), label smoothing "
         f"{config.label_smooth}, grad-norm clip {config.grad_clip}; validation every "
         f"{eval_freq} iterations\n"
         + (f"resuming from {ckpt_path} at iteration {start}/{total}" if start
            else f"training {total} iterations -> {save_dir}/"))

    if env.is_main:  # the resolved settings: --config reruns them
        write_settings(config.args, os.path.join(save_dir, SETTINGS_NAME),
                       resolved=dict(space_settings(space_cfg), input_format=config.input_format),
                       notes=[f"architecture: {space.format(arch)} ({source})",
                              f"{total} iterations of {spe} per epoch"])
    metrics_path = os.path.join(save_dir, "metrics.jsonl")
    if state is not None and env.is_main:
        dropped = files.trim_metrics(metrics_path, start)
        if dropped:
            log.info(f"note: dropped {dropped} row(s) of {metrics_path} logged after "
                     f"iteration {start} (the checkpoint's), so they are not logged twice")
    table = load_table(space_cfg)
    info = dict(flops=table.flops_of(arch), params=table.params_of(arch))
    task = SubnetTask(trainer, loader, val_loader, env, config=config, space_cfg=space_cfg,
                      arch=arch, amp=amp, channels_last=channels_last, ckpt_path=ckpt_path,
                      best_path=best_path, record=dict(identity, **info), best=best,
                      last_eval=last_eval)
    spec = LoopSpec(total_iters=total, steps_per_epoch=spe, batch_size=config.batch_size,
                    batch_per_rank=loader.batch_size_per_rank, report_freq=config.report_freq,
                    checkpoint=ckpt_path, metrics_path=metrics_path,
                    tensorboard_dir=os.path.join(save_dir, "tb"), start=start,
                    resumed=state is not None, prior_time=prior_time,
                    stop_after=config.stop_after, eval_freq=eval_freq,
                    validate_first=pending, fractional_epoch=True, desc="retrain")
    result = train_model(task, spec, env)
    if result.stopped_by is not None:
        return result.exit_code
    best = task.best
    record = result_record(arch, space_cfg, info, result.it, best, task.last_eval,
                           result.train_time, data_settings(config.args))
    if env.is_main:
        files.write_json_atomic(record, os.path.join(save_dir, "result.json"))
    log.info(f"finished {total} iterations ({result.done} in this run, "
             f"{result.images_per_s:.1f} images/s); best valid_acc_top1 {best['top1']:.4f} "
             f"valid_acc_top5 {best['top5']:.4f} at iteration {best['iters']} -> {best_path}")
    return 0


__all__ = ["run_retrain", "train_subnet", "check_resume", "check_val_images"]
