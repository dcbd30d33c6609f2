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

    add_launcher_args(parser)              # --local_rank / --local-rank (hidden)
    env = setup(local_rank=None, device="auto")   -> DistEnv
        DistEnv: rank, world_size, local_rank, device, backend, distributed, is_main
    cleanup(env)                           # destroy the process group (idempotent)
    barrier(env)
    all_reduce_sum(tensor, env)  -> tensor      # in place, returns it
    all_reduce_mean(tensor, env) -> tensor      # in place, returns it
    all_reduce_max_flag(flag: bool, env) -> bool  # over a CPU (gloo) side group: no GPU sync
    average_gradients(params, env)         # one flat all-reduce of the params' grads
    broadcast_tensors(tensors, env, src=0) # e.g. make every rank start from rank 0's weights
    broadcast_object(obj, env, src=0)
    all_gather_objects(obj, env) -> list
    rank0_print(env, *args, **kwargs)
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

from utils.cli import UserError


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

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """Accept what the legacy launcher appends; both spellings land in args.local_rank."""
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        dest="local_rank", help=argparse.SUPPRESS)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available")
        if device == "cuda":
            # One process per GPU: the launcher's local rank picks the card.
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise UserError(f"local rank {local_rank} has no GPU (this node has {count})")
            dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device(device)
        torch.cuda.set_device(dev)
        return dev
    if device != "cpu":
        raise UserError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
    return torch.device("cpu")


def setup(local_rank: int | None = None, device: str = "auto",
          timeout_minutes: float = 30.0) -> DistEnv:
    """Read the launcher's environment, pick the device, start the process group.

    `local_rank` is the value the legacy launcher passed on the command line (if any);
    torchrun's LOCAL_RANK environment variable wins when both are present.
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
    dev = _pick_device(device, local)
    env = DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # lets NCCL bind the communicator eagerly
        dist.init_process_group(**kwargs)
        env.backend = backend
        env.control_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return env


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


def all_reduce_mean(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(env.world_size)
    return tensor


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


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src,
                               device=env.device if env.device.type == "cuda" else None)
    return box[0]


def all_gather_objects(obj: Any, env: DistEnv) -> list:
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def rank0_print(env: DistEnv, *args: Any, **kwargs: Any) -> None:
    if env.is_main:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def describe(env: DistEnv) -> str:
    if not env.distributed:
        return f"single process on {env.device}"
    return (f"{env.world_size} processes ({env.backend}), rank {env.rank}, "
            f"local rank {env.local_rank}, device {env.device}")


__all__ = ["DistEnv", "add_launcher_args", "setup", "cleanup", "barrier", "all_reduce_sum",
           "all_reduce_mean", "all_reduce_max_flag", "average_gradients", "broadcast_tensors",
           "broadcast_object",
           "all_gather_objects", "rank0_print", "describe"]

if __name__ == "__main__":  # pragma: no cover - a quick manual check of the launch env
    e = setup()
    print(describe(e), file=sys.stderr)
    cleanup(e)
