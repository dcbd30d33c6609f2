"""The settings of a training run, one dataclass per stage, built from the parsed flags.

    config = SupernetConfig.from_args(args)      # stage 1 (supernet/main.py)
    config = RetrainConfig.from_args(args)       # stage 3 (retrain/train_from_scratch.py)
    config = config.resolved(steps_per_epoch=spe)   # once the data is known
    run_defining_fields(config) / resume_noted_fields(config) -> field names
    saved_args(config) -> the flags as plain values (a checkpoint's "args")

Fields carry marks (dataclasses.field metadata) that the resume check reads
(utils/train/state.py):
- RUN_DEFINING: the field fixes which samples, paths and LR each iteration gets, so a
  checkpoint made with another value cannot be continued exactly; resuming is refused.
  "saved_in": "args" reads the checkpoint's value from its "args" (else from its top
  level); "if_missing" is what a checkpoint from before the setting was recorded used
  (None: such a checkpoint is not compared).
- RESUME_NOTE: the field may change on resume; the change is reported
  (`report_changed_hyper`: applied, or continued from the optimizer state).
A field's value is the flag's, except where a stage resolves it (noted per field).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from utils.data.datasets import DEFAULT_DATASET
from utils.data.loaders import DEFAULT_RESIZE_MODE

RUN_DEFINING = {"run_defining": True}
RESUME_NOTE = {"resume_note": True}
# Retrain: the input convention and resize are recorded in the checkpoint's args; one
# from before --input-format was recorded is not compared, one from before --resize-mode
# existed was made with the antialiased resize.
_INPUT_FORMAT_MARK = {"run_defining": True, "saved_in": "args", "if_missing": None}
_RESIZE_MODE_MARK = {"run_defining": True, "saved_in": "args",
                     "if_missing": DEFAULT_RESIZE_MODE}
# Both stages: --dataset fixes the images and their normalisation, so a checkpoint of
# another dataset is refused even with --allow-data-change (which is for images added to
# or removed from the same dataset); checkpoints from before it was recorded are
# imagefolder ones.
_DATASET_MARK = {"run_defining": True, "saved_in": "args", "if_missing": DEFAULT_DATASET}


def _flag(mark: dict | None = None):
    """A field set from the flag of the same name (no default: from_args gives it)."""
    return field(metadata=mark or {})


class _FromArgs:
    """from_args / resolved for the stage configs."""

    args: argparse.Namespace | None

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """Each field from the flag of its name; fields no flag sets keep their default.
        The Namespace is kept: written settings and checkpoints record every flag."""
        given = vars(args)
        values = {f.name: given[f.name] for f in dataclasses.fields(cls)
                  if f.init and f.name in given and f.name != "args"}
        return cls(**values, args=args)

    def resolved(self, steps_per_epoch: int):
        """The run's length once the data is known: --total_iters, else --epochs x
        steps per epoch."""
        return dataclasses.replace(
            self, steps_per_epoch=int(steps_per_epoch),
            total_iters=self.total_iters or self.epochs * int(steps_per_epoch))


@dataclass(kw_only=True)
class SupernetConfig(_FromArgs):
    """Stage 1: training the one-shot supernet."""

    train_dir: str | None = _flag()
    checkpoint: str = _flag()
    allow_data_change: bool = _flag()
    # run-defining, in the order a refusal lists them
    dataset: str = field(metadata=_DATASET_MARK)
    seed: int = _flag(RUN_DEFINING)
    batch_size: int = _flag(RUN_DEFINING)       # global
    total_iters: int | None = _flag(RUN_DEFINING)   # resolved(): iterations of the run
    steps_per_epoch: int | None = field(default=None, metadata=RUN_DEFINING)  # resolved()
    # may change on resume (reported), in the order the notes list them
    learning_rate: float = _flag(RESUME_NOTE)
    min_lr: float = _flag(RESUME_NOTE)
    momentum: float = _flag(RESUME_NOTE)
    weight_decay: float = _flag(RESUME_NOTE)
    grad_clip: float = _flag(RESUME_NOTE)
    label_smooth: float = _flag(RESUME_NOTE)
    amp: str = _flag(RESUME_NOTE)
    # what trains
    train_all: bool = _flag()
    bn_params: str = _flag()
    train_classifier: bool = _flag()
    epochs: int = _flag()                        # resolved by the parser (10, or 100 SPOS)
    # loop
    report_freq: int = _flag()
    save_freq: int = _flag()
    stop_after: int = _flag()
    dump_dir: str | None = _flag()
    # data
    workers: int | None = _flag()
    input_format: str = _flag()
    resize_mode: str | None = _flag()
    min_scale: float = _flag()
    lighting: float = _flag()
    square_crop: bool = _flag()
    # space
    space: str = _flag()
    input_size: int = _flag()
    width_mult: float = _flag()
    classes: int | None = _flag()
    stem_stride: int = _flag()
    fixed_skips: str | None = _flag()
    # processes and device
    device: str = _flag()
    channels_last: bool | None = _flag()
    local_rank: int | None = _flag()
    dist_timeout: float | None = _flag()
    args: argparse.Namespace | None = field(default=None, repr=False, compare=False)

    def trainable(self) -> dict:
        """What a BN-only supernet trains, as its checkpoint records it."""
        return dict(bn_params=self.bn_params, train_classifier=bool(self.train_classifier))


@dataclass(kw_only=True)
class RetrainConfig(_FromArgs):
    """Stage 3: retraining a subnet from scratch (or, with `eval`, evaluating one)."""

    train_dir: str | None = _flag()
    test_dir: str | None = _flag()
    model_id: str | None = _flag()
    arch_from: str | None = _flag()
    save: str | None = _flag()
    allow_data_change: bool = _flag()
    # run-defining, in the order a refusal lists them
    # the flag, else the checkpoint's, else imagefolder (resolved by the stage)
    dataset: str | None = field(metadata=_DATASET_MARK)
    seed: int = _flag(RUN_DEFINING)
    batch_size: int = _flag(RUN_DEFINING)       # global
    total_iters: int | None = _flag(RUN_DEFINING)   # resolved(): iterations of the run
    steps_per_epoch: int | None = field(default=None, metadata=RUN_DEFINING)  # resolved()
    # the flag, else the checkpoint's, else the default (resolved by the stage)
    input_format: str | None = field(metadata=_INPUT_FORMAT_MARK)
    resize_mode: str | None = field(metadata=_RESIZE_MODE_MARK)
    # may change on resume (reported), in the order the notes list them
    learning_rate: float = _flag(RESUME_NOTE)
    momentum: float = _flag(RESUME_NOTE)
    weight_decay: float = _flag(RESUME_NOTE)
    grad_clip: float = _flag(RESUME_NOTE)
    label_smooth: float = _flag(RESUME_NOTE)
    amp: str = _flag(RESUME_NOTE)
    dropout: float | None = _flag(RESUME_NOTE)   # None: the space's (resolved by the stage)
    # validation only (not run-defining): the flag, else the checkpoint's, else 0.875
    val_crop_pct: float | None = _flag(RESUME_NOTE)
    decay_params: str = _flag()
    epochs: int = _flag()
    # loop
    report_freq: int = _flag()
    eval_freq: int | None = _flag()             # None: once per epoch
    stop_after: int = _flag()
    # --eval
    eval: bool = _flag()
    eval_resume: str | None = _flag()
    # data
    workers: int | None = _flag()
    min_scale: float = _flag()
    lighting: float = _flag()
    square_crop: bool = _flag()
    # space (None: from the search log / checkpoint, see utils.checkpoints.subnet)
    space: str | None = _flag()
    input_size: int | None = _flag()
    width_mult: float | None = _flag()
    classes: int | None = _flag()
    stem_stride: int | None = _flag()
    fixed_skips: str | None = _flag()
    # processes and device
    device: str = _flag()
    channels_last: bool | None = _flag()
    local_rank: int | None = _flag()
    dist_timeout: float | None = _flag()
    args: argparse.Namespace | None = field(default=None, repr=False, compare=False)

    def resolve(self, **values: Any) -> None:
        """Fill in settings the stage resolves (dataset, resize_mode, val_crop_pct,
        dropout), in the flags too: the checkpoint's args and the written settings record
        the resolved value."""
        for name, value in values.items():
            setattr(self, name, value)
            if self.args is not None:
                setattr(self.args, name, value)


def _marked(config, key: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config) if f.metadata.get(key))


def run_defining_fields(config) -> tuple[str, ...]:
    return _marked(config, "run_defining")


def resume_noted_fields(config) -> tuple[str, ...]:
    return _marked(config, "resume_note")


def saved_args(config) -> dict:
    """The flags as plain values (so a checkpoint stays loadable with weights_only=True)."""
    given = vars(config.args) if config.args is not None else {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "args"}
    return {k: v for k, v in given.items()
            if v is None or isinstance(v, (bool, int, float, str))}


__all__ = ["SupernetConfig", "RetrainConfig", "RUN_DEFINING", "RESUME_NOTE",
           "run_defining_fields", "resume_noted_fields", "saved_args"]
