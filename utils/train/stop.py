"""Why a training loop stops early: a signal (SIGINT/SIGTERM), `--stop-after`, or a
non-finite loss or weights (divergence, exit code 3).

    GracefulStop(env)          # context manager; SIGINT/SIGTERM -> .requested; the loop
        finishes its step, saves, exits; .reason(it, start, stop_after); .exit_code();
        .should_stop() agrees over ranks (CPU side group, no GPU sync)
    LossGuard(env, start_it)   # nan/inf loss watch: .step(loss) no sync; .first_bad() ->
        0-based iteration or None (one sync, agreed over ranks); .divergence(net, it, total)
    first_nonfinite(named_tensors, env) -> name of a nan/inf tensor or None (agreed)
    NonFiniteError             # UserError, exit code 3: training diverged
"""
from __future__ import annotations

import os
import signal
from typing import Iterable

import torch

from utils.errors import UserError


class GracefulStop:
    """SIGINT/SIGTERM set a flag instead of killing: the loop finishes its step, saves, exits.

    A second signal of the same kind restores the default behaviour (a second Ctrl-C
    kills). `should_stop()` agrees over ranks via the CPU control group, so every rank
    leaves the loop at the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, env=None):
        self.env = env
        self.requested = False
        self.signal_name: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def reason(self, it: int, start: int, stop_after: int) -> str | None:
        """Why the loop should leave now (a signal, or `--stop-after` iterations done)."""
        if self.should_stop():
            return self.signal_name or "signal"
        if stop_after and it - start >= stop_after:
            return f"--stop-after {stop_after}"
        return None

    def exit_code(self) -> int:
        """128 + signal number after a signal (the shell's convention), else 0."""
        if not self.requested:
            return 0
        return 128 + (2 if self.signal_name == "SIGINT" else 15)

    def should_stop(self) -> bool:
        if self.env is None or not self.env.distributed:
            return self.requested
        from utils.dist import all_reduce_max_flag
        agreed = all_reduce_max_flag(self.requested, self.env)
        self.requested = self.requested or agreed
        return agreed


class NonFiniteError(UserError):
    """Training diverged (a nan/inf loss or weights): one line, exit code 3."""

    exit_code = 3


class LossGuard:
    """Watch the training loss for nan/inf without a host sync per step.

    `step(loss)` only queues two tiny device ops: `acc += loss * 0` (0 while every loss
    is finite, nan from the first one that is not: inf * 0 is nan) and `good +=
    isfinite(acc)` (how many steps of the window came before the first bad one).
    `first_bad()` reads both once, agrees over the ranks (the smallest bad iteration of
    any rank, so every rank stops at the same point) and starts a new window; call it
    before every report and every save, so a save never follows a non-finite loss.
    """

    NONE = 2 ** 62

    def __init__(self, env, start_it: int):
        self.env = env
        self.acc = torch.zeros((), dtype=torch.float32, device=env.device)
        self.good = torch.zeros((), dtype=torch.int64, device=env.device)
        self.window_start = int(start_it)
        self.pending = 0

    def step(self, loss: torch.Tensor) -> None:
        self.acc.add_(loss.detach().float().mul(0.0))
        self.good.add_(torch.isfinite(self.acc))
        self.pending += 1

    def first_bad(self) -> int | None:
        """0-based iteration of the first non-finite loss since the last call, or None."""
        if self.pending == 0:  # the same on every rank: nothing to agree on
            return None
        good = int(self.good.item())
        bad = self.window_start + good if good < self.pending else self.NONE
        from utils.dist import all_reduce_min_int
        bad = all_reduce_min_int(bad, self.env)
        self.acc.zero_()
        self.good.zero_()
        self.window_start += self.pending
        self.pending = 0
        return None if bad >= self.NONE else bad

    def divergence(self, net: torch.nn.Module, it: int, total: int,
                   weights: bool = False) -> str | None:
        """What went non-finite, in words (None if nothing): the loss since the last
        check, or, with `weights` (before validating or saving), the weights."""
        bad_it = self.first_bad()
        if bad_it is not None:
            return f"the loss is nan or inf at iteration {bad_it + 1}/{total}"
        if weights:
            name = first_nonfinite(net.state_dict().items(), self.env)
            if name is not None:
                return f"the weights are nan or inf ({name}) after iteration {it}/{total}"
        return None


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]], env=None) -> str | None:
    """Name of the first floating tensor holding nan/inf (one host sync), else None.

    With `env`, the ranks agree: a rank whose tensors are all finite gets "(on another
    rank)" when some other rank's are not, so every rank can stop together.
    """
    items = [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]
    bad = None
    if items:
        with torch.no_grad():
            ok = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad = next((n for (n, _), f in zip(items, ok) if not f), None)
    if env is not None and getattr(env, "distributed", False):
        from utils.dist import all_reduce_max_flag
        if all_reduce_max_flag(bad is not None, env) and bad is None:
            bad = "(on another rank)"
    return bad


__all__ = ["GracefulStop", "NonFiniteError", "LossGuard", "first_nonfinite"]
