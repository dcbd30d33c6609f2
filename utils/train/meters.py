"""What a training run measures and shows: accuracy counts, time, the progress bar, and
the JSONL metrics file.

    topk_correct(logits, target, ks=(1, 5)) -> int64 tensor of correct COUNTS (no sync)
    Timer().elapsed()
    ProgressBar(total, env, desc, initial=0)  # rank-0 tqdm on stderr; .update(n, **postfix);
                                              # .set_position(i, **postfix); .close()
    MetricsLogger(path, env, tensorboard_dir=None)  # rank-0 JSONL (+ TensorBoard scalars
                                              # when `tensorboard` imports); nan/inf are
                                              # written as null (+ "nonfinite"); .log; .close
    metrics_path_for(checkpoint_path) -> "<stem>.metrics.jsonl" beside the checkpoint
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from utils.files import dumps_json


def topk_correct(logits: torch.Tensor, target: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """int64 [len(ks)]: how many samples have the target among the top-k (stays on device)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class ProgressBar:
    """tqdm on rank 0 (silent elsewhere); postfix values are plain numbers/strings.

    Log lines written while it shows go above it (utils/logs.py writes through tqdm)."""

    def __init__(self, total: int, env, desc: str = "", initial: int = 0,
                 disable: bool | None = None):
        self.bar = None
        if env.is_main and not disable:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            smoothing=0.05, file=sys.stderr, mininterval=1.0)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def set_position(self, position: int, **postfix: Any) -> None:
        """Move the bar to `position` (e.g. the iteration) in one update."""
        if self.bar is not None:
            self.update(max(0, position - self.bar.n), **postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def metrics_path_for(checkpoint_path: str) -> str:
    """`run/checkpoint.pth.tar` -> `run/checkpoint.metrics.jsonl`."""
    base = checkpoint_path
    for ext in (".tar", ".pth", ".pt", ".ckpt"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".metrics.jsonl"


class MetricsLogger:
    """Append-only JSONL metrics (one object per line, flushed) on rank 0.

    TensorBoard scalars go to `tensorboard_dir` too when the `tensorboard` package is
    importable; without it the JSONL file is the only record.
    """

    def __init__(self, path: str, env, tensorboard_dir: str | None = None):
        self.path, self.file, self.tb = path, None, None
        if not env.is_main:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a", buffering=1)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(tensorboard_dir)
            except Exception:  # noqa: BLE001 - tensorboard not installed: JSONL only
                self.tb = None

    def log(self, step: int, **scalars: Any) -> None:
        if self.file is None:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        # Non-finite values are written as null plus a "nonfinite" entry naming them.
        self.file.write(dumps_json(record) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _jsonable(v: Any) -> Any:
    if torch.is_tensor(v):
        v = v.tolist()
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


__all__ = ["topk_correct", "Timer", "ProgressBar", "metrics_path_for", "MetricsLogger"]
