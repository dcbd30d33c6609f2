"""Checkpoints: atomic writes, safe loads (weights_only), and clear refusals.

Every checkpoint this project writes is a dict with a "kind" ("supernet", "subnet",
"search"), the space "config" and plain Python / tensor values, so that
`torch.load(weights_only=True)` reads it without unpickling arbitrary objects.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import torch

from utils.cli import UserError
from utils.spaces import SpaceConfig

# Keys the reference's FLOPs profiler (thop) left in some saved state_dicts.
PROFILER_SUFFIXES = ("total_ops", "total_params")


def _tmp_beside(path: str, suffix: str) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    # mkstemp makes the file private (0600); the renamed result should get the permissions
    # a plain open() would give it, so teammates on a shared cluster can read checkpoints.
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    fd, tmp = _tmp_beside(path, ".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj: Any, path: str, indent: int | None = 1) -> None:
    fd, tmp = _tmp_beside(path, ".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; any failure is a one-line UserError naming the file."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"checkpoint path is a folder, not a file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint (a {type(obj).__name__}, not a dict)")
    return obj


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's `module.` prefix and profiler buffers."""
    out = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.rsplit(".", 1)[-1] in PROFILER_SUFFIXES:
            continue
        out[k] = v
    return out


def check_config(saved: dict | SpaceConfig, wanted: SpaceConfig, path: str) -> None:
    """Refuse a checkpoint built for another space config, naming what differs."""
    saved_cfg = saved if isinstance(saved, SpaceConfig) else SpaceConfig.from_dict(saved)
    if saved_cfg != wanted:
        raise UserError(f"checkpoint {path} is for another search space config "
                        f"({'; '.join(saved_cfg.diff(wanted))}; checkpoint vs requested)")
