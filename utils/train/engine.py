"""Training-loop pieces shared by supernet training and retraining.

Public API (stable; add, don't break):

    AMP_MODES = ("none", "fp16", "bf16")
    add_amp_args(parser)                   # --amp, --channels-last/--no-channels-last
    Amp(mode, device)                      # autocast + GradScaler in one object
        .autocast() context; .scale(loss) -> loss to backward; .unscale_(optimizer);
        .step(optimizer) (skips on inf/nan grads in fp16); .update();
        .state_dict() / .load_state_dict(); .enabled; .mode
    resolve_channels_last(flag: bool | None, device) -> bool   # None = on for CUDA
    LinearSchedule(base_lr, final_lr, total_iters)  # per-iteration linear decay
        .lr_at(it); .apply(optimizer, it) -> lr; .state_dict() / .load_state_dict()
    topk_correct(logits, target, ks=(1, 5)) -> int64 tensor of correct COUNTS (no sync)
    accuracy(logits, target, ks=(1, 5)) -> list of percentages (floats; syncs)
    DeviceMeter(device)                    # running sums on the device; .add(name, value,
                                           # weight) no sync; .means() syncs once
    ProgressBar(total, env, desc, initial=0)  # rank-0 tqdm; .update(n, **postfix);
                                           # .set_position(i, **postfix); .write(s); .close()
    MetricsLogger(path, env, tensorboard_dir=None)  # rank-0 JSONL (+ TensorBoard scalars
                                           # when the `tensorboard` package imports);
                                           # nan/inf are written as null (+ "nonfinite")
    LossGuard(env, start_it)               # nan/inf loss watch: .step(loss) no sync;
                                           # .first_bad() -> 0-based iteration or None
                                           # (one sync, agreed over ranks)
    first_nonfinite(named_tensors, env) -> name of a nan/inf tensor or None (agreed)
    NonFiniteError                         # UserError, exit code 3: training diverged
        .log(step, **scalars); .close()
    metrics_path_for(checkpoint_path) -> "<stem>.metrics.jsonl" beside the checkpoint
    seed_everything(seed, rank=0)
    rng_state() -> dict (weights_only-safe); set_rng_state(state)
    GracefulStop(env)                      # SIGINT/SIGTERM -> .requested; finish the step,
        context manager; .should_stop() agrees over ranks (CPU side group, no GPU sync)
    param_groups_no_bn_decay(model, weight_decay, params=None, policy="conv") -> SGD
        param groups; DECAY_POLICIES: conv | conv+classifier | conv+linear-weight
    Timer: .elapsed()
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from utils.files import dumps_json
from utils.cli.common import UserError

AMP_MODES = ("none", "fp16", "bf16")


def add_amp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amp", default="none", choices=AMP_MODES,
                        help="mixed precision with torch.autocast: fp16 (CUDA only, with "
                             "GradScaler) or bf16 (CPU or CUDA) (default: none)")
    parser.add_argument("--channels-last", "--channels_last", dest="channels_last",
                        action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory layout (default: on for CUDA, off on CPU)")


def resolve_channels_last(flag: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if flag is None else bool(flag)


class Amp:
    """torch.autocast plus (for fp16) torch.amp.GradScaler behind one small interface."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got '{mode}'")
        if mode == "fp16" and device.type != "cuda":
            raise UserError("--amp fp16 needs a CUDA device (use --amp bf16 on CPU)")
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--amp bf16 is not supported by this GPU (use --amp fp16)")
        self.mode, self.device = mode, device
        self.enabled = mode != "none"
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class LinearSchedule:
    """lr(it) = final + (base - final) * (1 - it / total): linear per iteration."""

    def __init__(self, base_lr: float, final_lr: float, total_iters: int):
        self.base_lr, self.final_lr = float(base_lr), float(final_lr)
        self.total_iters = max(1, int(total_iters))

    def lr_at(self, it: int) -> float:
        frac = min(max(it, 0), self.total_iters) / self.total_iters
        return self.final_lr + (self.base_lr - self.final_lr) * (1.0 - frac)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        lr = self.lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return dict(base_lr=self.base_lr, final_lr=self.final_lr, total_iters=self.total_iters)

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])
        self.final_lr = float(state["final_lr"])
        self.total_iters = int(state["total_iters"])


def topk_correct(logits: torch.Tensor, target: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """int64 [len(ks)]: how many samples have the target among the top-k (stays on device)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


def accuracy(logits: torch.Tensor, target: torch.Tensor,
             ks: Sequence[int] = (1, 5)) -> list[float]:
    counts = topk_correct(logits, target, ks).tolist()
    return [100.0 * c / max(1, target.numel()) for c in counts]


class DeviceMeter:
    """Weighted running sums kept on the device: adding never syncs; `means()` syncs once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        v = value.detach().float() * weight if torch.is_tensor(value) else float(value) * weight
        if name in self.sums:
            self.sums[name] = self.sums[name] + v
        else:
            self.sums[name] = v if torch.is_tensor(v) else torch.tensor(v, device=self.device)
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        names = list(self.sums)
        vals = torch.stack([self.sums[n].to(self.device).reshape(()) for n in names]).tolist()
        return {n: v / max(self.weights[n], 1e-12) for n, v in zip(names, vals)}

    def reset(self) -> None:
        self.sums.clear()
        self.weights.clear()


class ProgressBar:
    """tqdm on rank 0 (silent elsewhere); postfix values are plain numbers/strings."""

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

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

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


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices); `rank` offsets so ranks differ."""
    s = (int(seed) + 1000003 * int(rank)) % 2 ** 32
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict:
    """Every global RNG's state as tensors / lists, so weights_only loading accepts it."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=str(np_state[0]), keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]),
                   cached_gaussian=float(np_state[4])),
        python=dict(version=int(py_state[0]), state=list(py_state[1]),
                    gauss=py_state[2] if py_state[2] is None else float(py_state[2])),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"],
                             s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


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


# Which parameters get weight decay, as the original stages chose them (docs/method.md,
# "Weight decay"): the supernet decays every conv weight and the classifier's weight and
# bias; the retrain script names `classifier.0.*`, which in its retrained network is the
# dropout, so only the 4-D conv weights are decayed there.
DECAY_POLICIES = ("conv", "conv+classifier", "conv+linear-weight")


def param_groups_no_bn_decay(model: nn.Module, weight_decay: float,
                             params: Iterable[nn.Parameter] | None = None,
                             policy: str = "conv") -> list[dict]:
    """SGD groups: weight decay on the parameters `policy` names, none on the rest.

    conv: 4-D conv weights only (the original retrain); conv+classifier: also the
    classifier Linear's weight and bias (the original supernet); conv+linear-weight: also
    Linear weights but not biases (a common modern choice). BN parameters are never decayed.
    `params` restricts the groups to those parameters (e.g. only trainable ones); the
    order follows `model.named_parameters()` so it is the same on every rank and run.
    """
    if policy not in DECAY_POLICIES:
        raise ValueError(f"unknown weight-decay policy {policy!r} (one of {DECAY_POLICIES})")
    keep = None if params is None else {id(p) for p in params}
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if keep is not None and id(p) not in keep:
                continue
            if isinstance(module, nn.Conv2d):
                decayed = name == "weight"
            elif isinstance(module, nn.Linear):
                decayed = (policy == "conv+classifier"
                           or (policy == "conv+linear-weight" and name == "weight"))
            else:
                decayed = False
            (decay if decayed else no_decay).append(p)
    groups = []
    if decay:
        groups.append(dict(params=decay, weight_decay=weight_decay))
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0))
    return groups


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


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


__all__ = ["AMP_MODES", "add_amp_args", "resolve_channels_last", "Amp", "LinearSchedule",
           "topk_correct", "accuracy", "DeviceMeter", "ProgressBar", "MetricsLogger",
           "metrics_path_for", "seed_everything", "rng_state", "set_rng_state",
           "GracefulStop", "param_groups_no_bn_decay", "DECAY_POLICIES", "Timer",
           "NonFiniteError", "LossGuard", "first_nonfinite"]


# Hyperparameters a resume takes from the checkpoint's optimizer / LR-schedule state.
RESTORED_FROM_STATE = ("learning_rate", "min_lr", "momentum", "weight_decay")


def report_changed_hyper(old: dict, args: argparse.Namespace, names, log) -> None:
    """Say which changed settings a resume applies and which come back from the
    checkpoint (the LR schedule, momentum and weight decay live in its optimizer state)."""
    changed = [k for k in names if k in old and old[k] != getattr(args, k)]
    if not changed:
        return
    kept = [k for k in changed if k in RESTORED_FROM_STATE]
    applied = [k for k in changed if k not in RESTORED_FROM_STATE]
    if applied:
        log(f"note: resuming with changed {', '.join(applied)} (the checkpoint used "
            f"{', '.join(f'{k}={old[k]}' for k in applied)})")
    if kept:
        log(f"note: {', '.join(kept)} continue from the checkpoint's optimizer state "
            f"({', '.join(f'{k}={old[k]}' for k in kept)}); the new values are not used")


class TrainerState:
    """Mixin: optimizer, LR schedule and AMP scaler state of a trainer, for checkpoints."""

    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict:
        return dict(optimizer=self.optimizer.state_dict(), scheduler=self.schedule.state_dict(),
                    scaler=self.amp.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("scaler") or {})
