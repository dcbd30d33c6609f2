"""The training loop of both training stages (stage 1: supernet, stage 3: retrain).

    spec = LoopSpec(total_iters=..., steps_per_epoch=..., batch_size=..., batch_per_rank=...,
                    report_freq=..., checkpoint=path, metrics_path=..., start=it0, ...)
    result = train_model(task, spec, env)        # -> LoopResult (exit_code, ...)

The stage plugs in as a Task (utils/train/supernet.py SupernetTask, utils/train/subnet.py
SubnetTask): the loop asks it for batches, steps, checkpoint saves and validations, and
does the rest the same way for both:
- every --report_freq iterations (and at the end): the window's loss and top-1 (one
  all-reduce, the only host sync), LR and throughput, to the progress bar and metrics;
- `epoch_summary` (stage 1): a line per epoch and a save at its end; `save_freq`: a save
  every N iterations; `eval_freq` (stage 3): save, then validate, then save what it found;
- the last iteration is always saved; SIGINT/SIGTERM or --stop-after: finish the step,
  save, leave (exit 128+signal, or 0);
- a nan/inf loss (or weights, before any save or validation): stop at once, save
  nothing more, NonFiniteError (exit code 3);
- the last metrics row, and the "stopped by ..." line; the stage reports a finished run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from utils.dist import DistEnv, all_reduce_sum, barrier, maybe_freeze
from utils.logs import ROOT, get_logger
from utils.train.meters import MetricsLogger, ProgressBar, Timer
from utils.train.stop import GracefulStop, LossGuard, NonFiniteError

log = get_logger(__name__)


def note(msg: str) -> None:
    """A note on stderr (locks, stale temp files, resume notes), where the stages have
    always written them; callers decide which rank speaks."""
    log.warning(msg, extra={"all_ranks": True})


@dataclass
class Validation:
    """What a validation found: the line to log, the metrics row, and whether it is the
    best so far (then the save after it also writes the best checkpoint)."""

    message: str
    metrics: dict
    improved: bool = False


class Task:
    """What a stage gives the loop. `net` is the model (its weights are checked for
    nan/inf before every save and validation)."""

    net: torch.nn.Module

    def batches(self, epoch: int, step0: int) -> Iterable:
        """The batches of `epoch` from its step `step0` on."""
        raise NotImplementedError

    def step(self, batch: Any, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train iteration `it` (0-based): (loss, top-1 correct count) on the device."""
        raise NotImplementedError

    def lr_at(self, it: int) -> float:
        raise NotImplementedError

    def save(self, it: int, train_time: float, best: bool = False,
             eval_pending: bool = False) -> None:
        """Write the checkpoint of iteration `it` (called on every rank); `best`: also as
        the best one; `eval_pending`: it is a validation point not validated yet."""
        raise NotImplementedError

    def evaluate(self, it: int) -> Validation:
        """Validate iteration `it` (only called with LoopSpec.eval_freq)."""
        raise NotImplementedError

    def loop_ended(self, it: int) -> None:
        """Called on every rank once the loop is left, before the final barrier."""


@dataclass
class LoopSpec:
    total_iters: int
    steps_per_epoch: int
    batch_size: int                   # global
    batch_per_rank: int
    report_freq: int
    checkpoint: str                   # named in the divergence and stop messages
    metrics_path: str
    tensorboard_dir: str | None = None
    start: int = 0                    # the iteration to continue from
    resumed: bool = False             # `checkpoint` holds iteration `start`
    prior_time: float = 0.0           # training seconds of the earlier runs
    stop_after: int = 0
    save_freq: int = 0                # also save every N iterations (0: no)
    eval_freq: int | None = None      # validate every N iterations and at the end
    epoch_summary: bool = False       # a line and a save at every epoch's end
    validate_first: bool = False      # `start` was saved but not validated: do it first
    fractional_epoch: bool = False    # metrics rows give the epoch as it / steps_per_epoch
    desc: str = ""


@dataclass
class LoopResult:
    it: int                           # where the loop stopped
    done: int                         # iterations trained in this run
    seconds: float
    images_per_s: float
    train_time: float                 # with the earlier runs'
    stopped_by: str | None = None
    exit_code: int = 0


def _log_file_only(msg: str) -> None:
    """Record `msg` in the run's log file (if any) but not on screen: the error line
    that follows says the same."""
    logger = logging.getLogger(ROOT)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, None, None)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


@dataclass
class _Window:
    """Loss and correct counts summed on the device since the last report / epoch end."""

    device: torch.device
    it: int
    t: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.sums = torch.zeros(2, device=self.device)


def train_model(task: Task, spec: LoopSpec, env: DistEnv) -> LoopResult:
    """Run iterations spec.start..spec.total_iters of `task` (see the module docstring)."""
    total, spe = spec.total_iters, spec.steps_per_epoch
    metrics = MetricsLogger(spec.metrics_path, env, tensorboard_dir=spec.tensorboard_dir)
    bar = ProgressBar(total, env, desc=spec.desc, initial=spec.start)
    stop = GracefulStop(env)
    guard = LossGuard(env, spec.start)  # nan/inf losses, watched on the device
    it, timer = spec.start, Timer()
    window = _Window(env.device, it)
    epoch_sums = torch.zeros(2, device=env.device)
    saved_at = spec.start if spec.resumed else None
    stopped_by: str | None = None

    def ensure_finite(weights: bool = False) -> None:
        """Stop at once on a nan/inf loss (or, before a save or validation, weights): a
        diverged state is never reported, validated or saved; the checkpoint on disk
        keeps the last good one."""
        what = guard.divergence(task.net, it, total, weights)
        if what is None:
            return
        kept = (f"{spec.checkpoint} keeps iteration {saved_at}, the last good state"
                if saved_at is not None else "nothing was saved")
        metrics.log(it, event="diverged", reason=what)
        metrics.close()
        bar.close()
        _log_file_only(f"training diverged: {what} ({kept})")
        raise NonFiniteError(f"training diverged: {what} ({kept}); lower --learning_rate "
                             f"or check the data")

    def checkpoint_now(best: bool = False, verified: bool = False,
                       eval_pending: bool = False) -> None:
        nonlocal saved_at
        if not verified:
            ensure_finite(weights=True)
        saved_at = it
        task.save(it, spec.prior_time + timer.elapsed(), best=best, eval_pending=eval_pending)

    def reduced(sums: torch.Tensor, steps: int) -> tuple[float, float]:
        loss_sum, correct = all_reduce_sum(sums.clone(), env).tolist()
        n = max(1, steps * spec.batch_size)
        return loss_sum / n, 100.0 * correct / n

    def report(epoch: int) -> None:
        nonlocal window
        ensure_finite()
        epoch_sums.add_(window.sums)
        loss, top1 = reduced(window.sums, it - window.it)
        now = time.perf_counter()
        values = dict(loss=loss, top1=top1, lr=task.lr_at(it - 1),
                      img_s=(it - window.it) * spec.batch_size / max(now - window.t, 1e-9))
        window = _Window(env.device, it, now)
        bar.set_position(it, **values)
        metrics.log(it, epoch=it / spe if spec.fractional_epoch else epoch, **values)

    def end_epoch(epoch: int, first: int) -> None:
        loss, top1 = reduced(epoch_sums, it - first)
        epoch_sums.zero_()
        log.info(f"epoch {epoch + 1}: iteration {it}/{total} loss {loss:.4f} "
                 f"top-1 {top1:.2f}%")
        metrics.log(it, epoch=epoch, epoch_loss=loss, epoch_top1=top1)
        checkpoint_now()

    def validate() -> None:
        """Validate iteration `it` (already saved), save what it found, then log it."""
        found = task.evaluate(it)
        checkpoint_now(best=found.improved, verified=True)
        log.info(found.message)
        metrics.log(it, **found.metrics)

    try:
        if spec.validate_first:
            log.info(f"validating iteration {it} first: the previous run saved it but did "
                     f"not finish validating it")
            validate()
        with stop:
            while it < total and stopped_by is None:
                epoch, step0 = divmod(it, spe)
                first = it
                for batch in task.batches(epoch, step0):
                    maybe_freeze(env, it)
                    loss, correct = task.step(batch, it)
                    guard.step(loss)
                    window.sums += torch.stack([loss.float() * spec.batch_per_rank,
                                                correct.float()])
                    it += 1
                    epoch_end = spec.epoch_summary and (it % spe == 0 or it == total)
                    if it % spec.report_freq == 0 or it == total or epoch_end:
                        report(epoch)
                    if epoch_end:
                        end_epoch(epoch, first)
                    elif spec.save_freq and it % spec.save_freq == 0:
                        checkpoint_now()
                    if spec.eval_freq and (it % spec.eval_freq == 0 or it == total):
                        ensure_finite(weights=True)
                        # The training work is saved BEFORE validating: a failure while
                        # validating loses nothing, and the rerun validates this iteration.
                        checkpoint_now(verified=True, eval_pending=True)
                        validate()
                    if it >= total:
                        if saved_at != it:  # (the stages' epoch ends / validations save it)
                            checkpoint_now()
                        break
                    stopped_by = stop.reason(it, spec.start, spec.stop_after)
                    if stopped_by is not None:
                        checkpoint_now()
                        break
    finally:
        bar.close()
    seconds = timer.elapsed()
    done = it - spec.start
    ips = done * spec.batch_size / max(seconds, 1e-9)
    task.loop_ended(it)
    barrier(env)
    metrics.log(it, event="stopped" if stopped_by else "finished", seconds=round(seconds, 3),
                images_per_s=ips, iterations=done)
    metrics.close()
    if stopped_by is not None:
        log.info(f"stopped by {stopped_by} at iteration {it}/{total}; checkpoint saved to "
                 f"{spec.checkpoint}; rerun the same command to resume")
    return LoopResult(it=it, done=done, seconds=seconds, images_per_s=ips,
                      train_time=spec.prior_time + seconds, stopped_by=stopped_by,
                      exit_code=stop.exit_code() if stopped_by is not None else 0)


__all__ = ["Task", "Validation", "LoopSpec", "LoopResult", "train_model", "note"]
