"""Process-group setup and collective helpers for every training script.

One code path serves the three ways of starting a script:

* ``torchrun --nproc_per_node=N script.py ...`` (also multi-node with torchrun's usual
  ``--nnodes --node_rank --rdzv_*`` flags): RANK / WORLD_SIZE / LOCAL_RANK in the env;
* the legacy ``python3 -m torch.distributed.launch --nproc_per_node=N script.py ...``,
  which appends ``--local_rank=K`` (older torch) or ``--local-rank=K`` (newer) to argv
  and sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the env;
* a plain ``python3 script.py ...``: one process, no process group.

Backend: NCCL when the process drives a CUDA device, gloo on CPU.

Public API (stable; add, don't break):

    add_launcher_args(parser)              # --local_rank / --local-rank (hidden), --dist-timeout
    env = setup(local_rank=None, device="auto", timeout_s=None)   -> DistEnv
        DistEnv: rank, world_size, local_rank, device, backend, distributed, is_main,
        timeout_s (the collective timeout in force)
    resolve_timeout(backend, seconds=None) -> seconds: the flag, else $BNNAS_DIST_TIMEOUT,
        else DEFAULT_TIMEOUT_S[backend] (gloo 300 s, nccl 1800 s)
    with collective_guard(env): ...        # a collective that timed out -> PeerTimeoutError:
                                           # one line naming the rank(s) that stopped answering
    all_reduce_min_int(value, env) -> int  # over the CPU side group
    maybe_freeze(env, it)                  # test hook: BNNAS_TEST_FREEZE_RANK/_ITER
    cleanup(env)                           # destroy the process group (idempotent)
    barrier(env)
    all_reduce_sum(tensor, env)  -> tensor      # in place, returns it
    all_reduce_max_flag(flag: bool, env) -> bool  # over a CPU (gloo) side group: no GPU sync
    average_gradients(params, env)         # one flat all-reduce of the params' grads
    broadcast_tensors(tensors, env, src=0) # e.g. make every rank start from rank 0's weights
    all_gather_objects(obj, env) -> list
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

from utils.cli.common import UserError, finite_float, nonneg_int
from utils.logs import get_logger

# Collective timeout (seconds): --dist-timeout, else this environment variable, else the
# backend's default. A frozen peer then stops the job after this long instead of torch's
# 30 minutes; CPU (gloo) steps are short, so 5 minutes is plenty there, while NCCL keeps
# torch's 30 minutes (first steps compile kernels, checkpoints of big models are slow).
DIST_TIMEOUT_ENV = "BNNAS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = {"gloo": 300.0, "nccl": 1800.0}
TIMEOUT_MAX_S = 7 * 24 * 3600.0
timeout_seconds = finite_float(0.0, TIMEOUT_MAX_S, lo_open=True)
# Test hook: the rank BNNAS_TEST_FREEZE_RANK stops answering (sleeps forever) when it
# reaches iteration BNNAS_TEST_FREEZE_ITER (default 1) of a training loop.
FREEZE_RANK_ENV, FREEZE_ITER_ENV = "BNNAS_TEST_FREEZE_RANK", "BNNAS_TEST_FREEZE_ITER"


class PeerTimeoutError(UserError):
    """A collective timed out: some rank stopped answering (one line, exit code 4)."""

    exit_code = 4


@dataclass
class DistEnv:
    """Where this process sits in the job, and the device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: single process, no process group
    # A gloo group for tiny control messages (stop flags), so that agreeing on them never
    # waits for the GPU stream; None on a single process.
    control_group: Any = None
    timeout_s: float | None = None  # the collective timeout of the process group
    freeze_at: int | None = None  # test hook (FREEZE_RANK_ENV): iteration to freeze at

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """Accept what the legacy launcher appends (both spellings land in args.local_rank),
    and --dist-timeout."""
    parser.add_argument("--local_rank", "--local-rank", type=nonneg_int, default=None,
                        dest="local_rank", help=argparse.SUPPRESS)
    parser.add_argument("--dist-timeout", "--dist_timeout", dest="dist_timeout",
                        type=timeout_seconds, default=None, metavar="SECONDS",
                        help=f"multi-process runs: seconds a collective may wait for the "
                             f"other processes before the job stops, naming the rank that "
                             f"stopped answering (default: ${DIST_TIMEOUT_ENV}, else "
                             f"{DEFAULT_TIMEOUT_S['gloo']:g} on CPU/gloo, "
                             f"{DEFAULT_TIMEOUT_S['nccl']:g} on GPU/NCCL)")


def resolve_timeout(backend: str, seconds: float | None = None) -> float:
    """The collective timeout: `seconds`, else $BNNAS_DIST_TIMEOUT, else the backend's."""
    if seconds is None:
        text = os.environ.get(DIST_TIMEOUT_ENV, "")
        if text.strip():
            try:
                seconds = timeout_seconds(text)
            except argparse.ArgumentTypeError as e:
                raise UserError(f"environment variable {DIST_TIMEOUT_ENV}={text!r}: {e}") \
                    from None
    if seconds is None:
        seconds = DEFAULT_TIMEOUT_S.get(backend, DEFAULT_TIMEOUT_S["nccl"])
    if not 0 < float(seconds) <= TIMEOUT_MAX_S:
        raise UserError(f"--dist-timeout must be in (0, {TIMEOUT_MAX_S:g}] seconds, "
                        f"got {seconds}")
    return float(seconds)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def launcher_rank(local_rank: int | None = None) -> int:
    """This process's rank as the launcher set it (RANK, else LOCAL_RANK, else the legacy
    launcher's --local_rank value), 0 when started without a launcher."""
    for name in ("RANK", "LOCAL_RANK"):
        value = _env_int(name)
        if value is not None:
            return value
    return local_rank or 0


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """The torch device of a --device value: auto, cpu, cuda or cuda:N (one-line
    UserError otherwise, or when CUDA is asked for and absent). With `local_rank` (a
    launched process), "cuda" is that local rank's GPU and becomes the current device;
    without it (one process, e.g. SPOS scoring), "cuda" is the current CUDA device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise UserError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
        if dev.type != "cuda":
            raise UserError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available")
        if local_rank is None:
            return dev
        if device == "cuda":
            # One process per GPU: the launcher's local rank picks the card.
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise UserError(f"local rank {local_rank} has no GPU (this node has {count})")
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        return dev
    if device != "cpu":
        raise UserError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
    return torch.device("cpu")


def setup(local_rank: int | None = None, device: str = "auto",
          timeout_minutes: float | None = None, timeout_s: float | None = None) -> DistEnv:
    """Read the launcher's environment, pick the device, start the process group.

    `local_rank` is the value the legacy launcher passed on the command line (if any);
    torchrun's LOCAL_RANK environment variable wins when both are present. The collective
    timeout is `timeout_s` (or `timeout_minutes`), else `resolve_timeout`'s default.
    """
    world = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    env_local = _env_int("LOCAL_RANK")
    local = env_local if env_local is not None else (local_rank if local_rank is not None else 0)
    if world > 1 and local_rank is not None and env_local is None:
        # The legacy launcher without --use_env does not export LOCAL_RANK; later code
        # (and libraries) may look for it.
        os.environ["LOCAL_RANK"] = str(local)
    if world > 1 and ("MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ):
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: "
                        "start the script with torchrun or torch.distributed.launch")
    dev = resolve_device(device, local)
    env = DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if timeout_s is None and timeout_minutes is not None:
            timeout_s = 60.0 * float(timeout_minutes)
        env.timeout_s = resolve_timeout(backend, timeout_s)
        timeout = timedelta(seconds=env.timeout_s)
        kwargs: dict[str, Any] = dict(backend=backend, timeout=timeout)
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # lets NCCL bind the communicator eagerly
        dist.init_process_group(**kwargs)
        env.backend = backend
        env.control_group = (dist.new_group(backend="gloo", timeout=timeout)
                             if backend != "gloo" else None)
        env.freeze_at = _freeze_iteration(rank)
    return env


# ---- a peer that stops answering ------------------------------------------------------

def _freeze_iteration(rank: int) -> int | None:
    text = os.environ.get(FREEZE_RANK_ENV, "")
    if not text.strip() or text.strip() != str(rank):
        return None
    try:
        return int(os.environ.get(FREEZE_ITER_ENV, "1") or 1)
    except ValueError:
        raise UserError(f"{FREEZE_ITER_ENV} must be an iteration number") from None


def maybe_freeze(env: DistEnv, it: int) -> None:
    """Test hook: the rank named by BNNAS_TEST_FREEZE_RANK stops answering at iteration
    BNNAS_TEST_FREEZE_ITER (sleeps forever; SIGTERM, e.g. from torchrun, still ends it)."""
    if env.freeze_at is None or it != env.freeze_at:
        return
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    get_logger(__name__).warning(f"rank {env.rank}: {FREEZE_RANK_ENV}: freezing at "
                                 f"iteration {it}", extra={"all_ranks": True})
    while True:
        time.sleep(3600)


# How a timed-out collective reads: gloo ("Timed out waiting 20000ms for recv operation"),
# the c10d store ("... timeout"), NCCL's watchdog ("Watchdog caught collective operation
# timeout"), DDP ("... timed out"). Other errors pass through unchanged.
_TIMEOUT_MARKS = ("timed out", "timeout", "time out")


def _is_collective_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    if "dataloader" in text:  # the data loader's own timeout is not a peer's
        return False
    return any(m in text for m in _TIMEOUT_MARKS)


def _silent_ranks(env: DistEnv, grace_s: float) -> list[int] | None:
    """Ranks that do not report within `grace_s` after this one timed out: every rank that
    is alive times out in the same collective and reports through the rendezvous store,
    so the missing ones are those that stopped answering. None: the store did not answer."""
    result: list = []

    def ask() -> None:
        try:
            store = dist.distributed_c10d._get_default_store()
            try:
                store.set_timeout(timedelta(seconds=max(1.0, grace_s)))
            except Exception:  # noqa: BLE001 - older stores: keep their timeout
                pass
            store.set(f"bnnas/timed_out/{env.rank}", str(time.time()))
            others = [r for r in range(env.world_size) if r != env.rank]
            deadline = time.monotonic() + grace_s
            missing = others
            while True:
                missing = [r for r in others if not store.check([f"bnnas/timed_out/{r}"])]
                if not missing or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            result.append(missing)
        except Exception:  # noqa: BLE001 - the store is gone too
            pass

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(grace_s + 5.0)
    return result[0] if result else None


def timeout_message(env: DistEnv, exc: BaseException | None = None) -> str:
    """One line: which rank timed out, after how long, and which peer(s) stopped answering."""
    timeout = env.timeout_s or 0.0
    grace = min(30.0, max(3.0, 0.2 * timeout))
    silent = _silent_ranks(env, grace) if env.distributed else []
    head = (f"rank {env.rank}: a collective operation timed out after {timeout:g} s "
            f"(--dist-timeout / ${DIST_TIMEOUT_ENV})")
    if silent is None:
        who = ("the rendezvous store does not answer either: its host (rank 0 or the "
               "launcher) stopped answering or died")
    elif silent:
        names = ", ".join(str(r) for r in silent)
        who = (f"rank{'s' if len(silent) > 1 else ''} {names} stopped answering (no report "
               f"within {grace:g} s; the other ranks timed out waiting too)")
    else:
        who = ("every rank reported the timeout, so none is frozen: the ranks are in "
               "different collectives, or a step takes longer than the timeout (raise it)")
    return f"{head}: {who}"


@contextlib.contextmanager
def collective_guard(env: DistEnv):
    """Turn a timed-out collective into PeerTimeoutError (one line naming the silent rank)."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - gloo/c10d raise RuntimeError subclasses
        if not env.distributed or not _is_collective_timeout(e):
            raise
        raise PeerTimeoutError(timeout_message(env, e)) from None


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min_int(value: int, env: DistEnv) -> int:
    """The smallest `value` over the ranks (a CPU tensor over gloo: no GPU sync)."""
    if not env.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=env.control_group)
    return int(t.item())


def all_reduce_max_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank if it is True on any rank (CPU tensor over gloo: no GPU sync)."""
    if not env.distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control_group)
    return bool(t.item())


def average_gradients(params: Sequence[torch.Tensor], env: DistEnv) -> None:
    """Average the grads of `params` over ranks with a single flat all-reduce.

    Every rank must pass the same parameters in the same order, all with a grad. One
    flat buffer keeps it to one collective per step instead of one per tensor.
    """
    if not env.distributed or not params:
        return
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        raise RuntimeError("average_gradients: a parameter has no gradient")
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(env.world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_tensors(tensors: Iterable[torch.Tensor], env: DistEnv, src: int = 0) -> None:
    """Overwrite `tensors` (e.g. a model's parameters and buffers) with rank `src`'s values."""
    if not env.distributed:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def all_gather_objects(obj: Any, env: DistEnv) -> list:
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def describe(env: DistEnv) -> str:
    if not env.distributed:
        return f"single process on {env.device}"
    return (f"{env.world_size} processes ({env.backend}), rank {env.rank}, "
            f"local rank {env.local_rank}, device {env.device}")


__all__ = ["DistEnv", "add_launcher_args", "setup", "cleanup", "barrier", "all_reduce_sum",
           "all_reduce_max_flag", "all_reduce_min_int", "resolve_timeout",
           "collective_guard", "timeout_message", "maybe_freeze", "PeerTimeoutError",
           "DIST_TIMEOUT_ENV", "DEFAULT_TIMEOUT_S", "average_gradients", "broadcast_tensors",
           "all_gather_objects", "describe"]
