"""Checkpoints: atomic writes, safe loads (weights_only), and clear refusals.

Every checkpoint this project writes is a dict with a "kind" ("supernet", "subnet",
"search"), the space "config" and plain Python / tensor values, so that
`torch.load(weights_only=True)` reads it without unpickling arbitrary objects.

Saves are atomic (utils/files.py: temp file beside the output, then a rename).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch

from utils import files
from utils.errors import UserError
from utils.spaces import SpaceConfig

# Keys the reference's FLOPs profiler (thop) left in some saved state_dicts.
PROFILER_SUFFIXES = ("total_ops", "total_params")


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    files.write_atomic(path, ".pth", lambda f: torch.save(obj, f))


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; any failure is a one-line UserError naming the file."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"checkpoint path is a folder, not a file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise UserError(_load_failure(path, e)) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint (a {type(obj).__name__}, not a dict)")
    return obj


def _load_failure(path: str, e: Exception) -> str:
    """One line for a failed safe load; a blocked pickle global is named."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(
        r"GLOBAL (\S+) was not an allowed global", text)
    if m:
        return (f"refusing to load {path}: it holds a pickled Python object "
                f"('{m.group(1)}') that a safe load (weights_only) does not run; this "
                f"project's checkpoints hold only tensors and plain values (if you trust the "
                f"file, re-save its tensors as a plain dict)")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"cannot read checkpoint {path}: {first[:200]}"


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
