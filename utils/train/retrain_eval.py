"""Stage 3 with --eval: evaluate a retrained checkpoint (this project's or the
reference's) on --test_dir, exactly (utils/train/evaluate.py), optionally writing
eval-NAME/eval.json.

    exit_code = evaluate_checkpoint(config, env)
    input_format, resize_mode, why = eval_data_settings(config, loaded)
    dataset, crop_pct = eval_dataset_settings(config, loaded)
"""
from __future__ import annotations

import os

import torch

from utils import files
from utils.checkpoints.subnet import (SubnetCheckpoint, load_subnet_state,
                                      read_subnet_checkpoint, subnet_state)
from utils.cli.config_file import space_settings, write_settings
from utils.data.datasets import get_dataset, recorded_dataset
from utils.data.identity import label_map
from utils.data.loaders import DEFAULT_INPUT_FORMAT, DEFAULT_RESIZE_MODE, build_val_loader
from utils.data.transforms import recorded_crop_pct
from utils.dist import DistEnv, describe
from utils.logs import get_logger
from utils.spaces import get_space
from utils.train.amp import Amp, resolve_channels_last
from utils.train.config import RetrainConfig
from utils.train.evaluate import evaluate
from utils.train.meters import ProgressBar
from utils.train.retrain_arch import choose_arch, class_names_of, describe_arch
from utils.train.retrain_outputs import EVAL_SETTINGS_NAME, data_note, data_settings, save_dir_of

log = get_logger(__name__)


def eval_data_settings(config, loaded: SubnetCheckpoint) -> tuple[str, str, str]:
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
    input_format = config.input_format or saved_format or DEFAULT_INPUT_FORMAT
    resize_mode = config.resize_mode or saved_resize or DEFAULT_RESIZE_MODE
    if config.resize_mode:
        why = "--resize-mode"
    elif loaded.kind == "reference":
        why = "default for the original's checkpoints: its OpenCV resize"
    else:
        why = "the checkpoint's" if saved_resize else "default"
    return input_format, resize_mode, why


def eval_dataset_settings(config, loaded: SubnetCheckpoint) -> tuple[str, float]:
    """(dataset, validation crop fraction) for --eval: flags given win; else what the
    checkpoint records (this project's; older ones and the original's: imagefolder and
    0.875), so its normalisation and crop are the ones it was validated with."""
    saved = (loaded.raw.get("args") or {}) if loaded.kind == "subnet" else {}
    dataset = config.dataset or recorded_dataset(saved, loaded.path)
    crop_pct = (config.val_crop_pct if config.val_crop_pct is not None
                else recorded_crop_pct(saved))
    return dataset, crop_pct


def _progress(env: DistEnv, total: int, desc: str):
    def wrap(loader):
        bar = ProgressBar(total, env, desc=desc)
        try:
            for batch in loader:
                yield batch
                bar.update(1)
        finally:
            bar.close()
    return wrap


def evaluate_checkpoint(config: RetrainConfig, env: DistEnv) -> int:
    save_dir = save_dir_of(config)
    path = config.eval_resume or os.path.join(save_dir, "best.pth.tar")
    loaded = read_subnet_checkpoint(path)
    dataset, crop_pct = eval_dataset_settings(config, loaded)
    config.resolve(dataset=dataset, val_crop_pct=crop_pct)  # eval_config.yaml records them
    spec = get_dataset(dataset)
    spec.require_root(config.test_dir, "--test_dir")
    if config.save and env.is_main:  # eval.json goes there: refuse an unwritable place now
        files.check_output_dir(save_dir, "the --save folder")
    arch, space_cfg, source = choose_arch(config, spec.count_classes(config.test_dir, "val"),
                                          loaded)
    space = get_space(space_cfg)
    state = subnet_state(loaded, space, arch)
    net = space.subnet(arch, dropout=config.dropout)
    load_subnet_state(net, state, path, space.format(arch))
    input_format, resize_mode, resize_why = eval_data_settings(config, loaded)
    for line in describe_arch(space, arch, space_cfg, source).splitlines():
        log.info(line)
    per_rank = max(1, config.batch_size // env.world_size)
    loader = build_val_loader(root=config.test_dir, input_size=space_cfg.input_size,
                              batch_size_per_rank=per_rank, env=env, workers=config.workers,
                              input_format=input_format, classes=space_cfg.classes,
                              resize_mode=resize_mode, dataset=spec, crop_pct=crop_pct)
    # Labels are the checkpoint's outputs: class folders matched by the names it records
    # (a subset of its classes is fine), else by position (then all of them are needed).
    loader.relabel(label_map(loader.classes, class_names_of(loaded), space_cfg.classes,
                             "--test_dir", path))
    amp = Amp(config.amp, env.device)
    channels_last = resolve_channels_last(config.channels_last, env.device)
    net = net.to(env.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    log.info(f"evaluating {path} ({'reference' if loaded.kind == 'reference' else 'subnet'} "
             f"checkpoint, iteration {loaded.iters}) on {loader.num_samples} images of "
             f"{config.test_dir}; input {input_format}; resize {resize_mode} ({resize_why})"
             f"{data_note(spec, crop_pct)}; {describe(env)}")
    if config.save and env.is_main:  # beside eval.json: --config reruns this evaluation
        write_settings(config.args, os.path.join(save_dir, EVAL_SETTINGS_NAME),
                       resolved=dict(space_settings(space_cfg), input_format=input_format,
                                     resize_mode=resize_mode),
                       notes=[f"evaluated: {path}, architecture {space.format(arch)} "
                              f"({source})"])
    res = evaluate(net, loader, env, amp=amp, channels_last=channels_last,
                   progress=_progress(env, len(loader), "eval"))
    log.info(f"valid_acc_top1 {res.top1:.4f}\nvalid_acc_top5 {res.top5:.4f}\n"
             f"valid_loss {res.loss:.4f}  ({res.correct1}/{res.samples} correct)")
    if config.save and env.is_main:
        out = os.path.join(save_dir, "eval.json")
        files.write_json_atomic(dict(valid_acc_top1=res.top1, valid_acc_top5=res.top5,
                                     valid_loss=res.loss, correct_top1=res.correct1,
                                     correct_top5=res.correct5, samples=res.samples,
                                     checkpoint=path, arch=list(arch),
                                     config=space_cfg.to_dict(), input_format=input_format,
                                     resize_mode=resize_mode, **data_settings(config.args)),
                               out)
        log.info(f"wrote {out}")
    return 0


__all__ = ["evaluate_checkpoint", "eval_data_settings", "eval_dataset_settings"]
