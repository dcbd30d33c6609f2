"""Resuming a run: the trainer's optimizer state, and the check that a checkpoint is this
run's.

    TrainerState                 # mixin: optimizer / LR schedule / AMP scaler state_dict
    check_run_settings(state, config, path, other)   # refuse changed run-defining fields
    report_changed_hyper(old_args, config, names, log)  # say what a resume changes
    RESTORED_FROM_STATE          # settings that come back from the optimizer state

The run-defining fields are the ones utils/train/config.py marks; the refusal names every
one that changed, in one line.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from utils.errors import UserError

# Hyperparameters a resume takes from the checkpoint's optimizer / LR-schedule state.
RESTORED_FROM_STATE = ("learning_rate", "min_lr", "momentum", "weight_decay")


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


def changed_run_settings(state: dict, config) -> list[str]:
    """'name: checkpoint's vs now' for every run-defining field of `config` that differs."""
    diffs = []
    for f in dataclasses.fields(config):
        mark = f.metadata
        if not mark.get("run_defining"):
            continue
        source = (state.get("args") or {}) if mark.get("saved_in") == "args" else state
        old = source.get(f.name)
        if "if_missing" in mark and not old:
            old = mark["if_missing"]
            if old is None:  # recorded by no checkpoint of that age: nothing to compare
                continue
        now = getattr(config, f.name)
        if now is None and mark.get("if_missing") is not None:
            now = mark["if_missing"]  # not set (not resolved yet): the default
        if old != now:
            diffs.append(f"{f.name}: {old} vs {now}")
    return diffs


def check_run_settings(state: dict, config, path: str, other: str) -> None:
    """Refuse to resume `path` when a run-defining setting changed (one line naming each);
    `other` is what to change instead ("--checkpoint", "--save name")."""
    diffs = changed_run_settings(state, config)
    if diffs:
        raise UserError(f"checkpoint {path} was made with other run settings "
                        f"({'; '.join(diffs)}; checkpoint vs now): rerun with the original "
                        f"settings or use another {other}")


def report_changed_hyper(old: dict, args, names: Iterable[str],
                         log: Callable[[str], None]) -> None:
    """Say which changed settings a resume applies and which come back from the
    checkpoint (the LR schedule, momentum and weight decay live in its optimizer state).
    `old` is the checkpoint's args; `args` anything with the settings as attributes."""
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


__all__ = ["TrainerState", "RESTORED_FROM_STATE", "changed_run_settings",
           "check_run_settings", "report_changed_hyper"]
