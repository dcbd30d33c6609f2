"""Exact top-1 / top-5 evaluation, single process or sharded over distributed ranks.

Each rank evaluates its own shard of the validation set (`utils.data.loaders.build_val_loader`:
disjoint, unpadded) and counts correct predictions; the integer counts and the sample
count are summed over ranks, and only then turned into percentages. Averaging per-rank
percentages would weight ranks wrongly whenever shards differ in size, and padding a
shard (as DistributedSampler does) would count some images twice: this way the result
equals the single-process one exactly.

    result = evaluate(model, val_loader, env, amp=amp, channels_last=True)
    result.top1, result.top5, result.loss, result.samples
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from utils.dist import DistEnv, all_reduce_sum
from utils.train.meters import topk_correct


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy (no label smoothing)
    correct1: int
    correct5: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def _default_prepare(batch, device: torch.device, channels_last: bool = False):
    images, target = batch[0].to(device).float(), batch[1].to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, env: DistEnv | None = None, *,
             amp: Any = None, channels_last: bool = False,
             prepare: Callable | None = None,
             progress: Callable[[Iterable], Iterable] | None = None) -> EvalResult:
    """Top-1/top-5 (percent) and mean loss of `model` over every rank's shard of `loader`.

    loader    yields batches (images, labels, ...); each rank holds a disjoint shard.
    prepare   `(batch, device, channels_last) -> (input, labels)` on the device; default
              the loader's own `.prepare` (utils.data.loaders), else a plain float cast.
    amp       an `utils.train.amp.Amp` (its autocast is used) or None.
    progress  optional wrapper of the loader (a progress bar).
    Call it on every rank (it all-reduces), also on a rank whose shard is empty.
    """
    env = env or DistEnv()
    device = env.device
    prepare = prepare or getattr(loader, "prepare", None) or _default_prepare
    was_training = model.training
    model.eval()
    # [correct1, correct5, samples] as exact integers; the loss summed in float64.
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    autocast = amp.autocast if amp is not None else contextlib.nullcontext
    try:
        for batch in (progress(loader) if progress else loader):
            images, target = prepare(batch, device, channels_last)
            with autocast():
                logits = model(images)
            logits = logits.float()
            counts[:2] += topk_correct(logits, target, (1, 5))
            counts[2] += target.numel()
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").double()
    finally:
        model.train(was_training)
    c1, c5, n = (int(v) for v in all_reduce_sum(counts, env).tolist())
    loss = all_reduce_sum(loss_sum, env).item()
    if n == 0:
        return EvalResult(0.0, 0.0, float("nan"), 0, 0, 0)
    return EvalResult(100.0 * c1 / n, 100.0 * c5 / n, loss / n, c1, c5, n)
