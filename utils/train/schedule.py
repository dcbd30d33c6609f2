"""The optimizer's recipe: the per-iteration linear LR decay and the weight-decay groups.

    LinearSchedule(base_lr, final_lr, total_iters)  .lr_at(it); .apply(optimizer, it) -> lr;
        .state_dict() / .load_state_dict()
    param_groups_no_bn_decay(model, weight_decay, params=None, policy="conv") -> SGD groups
    DECAY_POLICIES: conv | conv+classifier | conv+linear-weight
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


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


__all__ = ["LinearSchedule", "DECAY_POLICIES", "param_groups_no_bn_decay"]
