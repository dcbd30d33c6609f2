"""Mixed precision and memory layout: `--amp`, `--channels-last`, and the Amp object.

    add_amp_args(parser)                   # --amp, --channels-last/--no-channels-last
    amp = Amp(mode, device)                # autocast + (fp16) GradScaler in one object
        .autocast() context; .scale(loss); .unscale_(optimizer); .step(optimizer)
        (skips on inf/nan grads in fp16); .update(); .state_dict() / .load_state_dict()
    resolve_channels_last(flag, device) -> bool   # None = on for CUDA
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from utils.errors import UserError

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


__all__ = ["AMP_MODES", "add_amp_args", "resolve_channels_last", "Amp"]
