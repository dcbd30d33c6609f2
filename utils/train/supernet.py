"""One supernet training step, BN-NAS (indicator BNs only) or SPOS (--train-all).

    path = sample_path(space, seed, it)          # same on every rank, resumable
    trainer = SupernetTrainer(space, net, env, train_all=False, ...)
    loss, correct = trainer.step(x, y, it)        # tensors on the device, no host sync

What "frozen" means here:
* Frozen parameters have requires_grad=False, so autograd computes no weight gradient
  for them (and nothing at all before the first trainable BN on the path).
* The optimizer holds only trainable parameters. After every step the path's gradients
  are set to None, and the next step only produces gradients for the ops it samples;
  torch.optim.SGD skips parameters whose grad is None, so an op that was not sampled
  gets no momentum and no weight-decay update in that step.

Multi-rank gradient sync: every rank runs the same path, so we all-reduce the path's
trainable gradients ourselves, as one flat buffer. DistributedDataParallel would need
find_unused_parameters=True for a single-path supernet; it then all-reduces a full-size
bucket (zeros for every op off the path) each step and marks unused parameters with zero
gradients, which SGD would turn into momentum and weight-decay updates of ops that were
not sampled. BN running statistics are not synchronised: each rank keeps its own (rank 0
saves its copy), as the reference did.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.dist import DistEnv, average_gradients
from utils.train.engine import Amp, LinearSchedule, TrainerState, param_groups_no_bn_decay
from utils.spaces import SKIP, SearchSpace, Supernet


def sample_path(space: SearchSpace, seed: int, it: int) -> tuple[int, ...]:
    """Uniform single path for iteration `it`: a pure function of (seed, it)."""
    return space.random_arch(np.random.default_rng([int(seed) & 0xFFFFFFFF, int(it)]))


# Which parameters a BN-only supernet trains (`supernet/main.py --bn-params`): the
# original trains the gamma/beta of each candidate op's indicator BN (its last BN) and
# nothing else; "all" trains every BN's gamma and beta (stem, fixed block, every BN inside
# the ops, head) - an ablation, as is training the classifier too.
BN_PARAM_CHOICES = ("indicator", "all")


def freeze_for_bn_nas(space: SearchSpace, net: Supernet, bn_params: str = "indicator",
                      train_classifier: bool = False) -> list[nn.Parameter]:
    """Freeze everything but the BN affine parameters `bn_params` names (and, with
    `train_classifier`, the classifier's weight and bias); returns what stays trainable."""
    if bn_params not in BN_PARAM_CHOICES:
        raise ValueError(f"bn_params must be one of {BN_PARAM_CHOICES}, got {bn_params!r}")
    for p in net.parameters():
        p.requires_grad_(False)
    if bn_params == "indicator":
        bns = [bn for layer_bns in space.indicator_modules(net) for bn in layer_bns]
    else:
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    chosen = [p for bn in bns for p in (bn.weight, bn.bias)]
    if train_classifier:
        chosen += list(net.head.classifier.parameters())
    for p in chosen:
        p.requires_grad_(True)
    # the model's own order, so the optimizer's groups are the same on every rank and run
    return [p for p in net.parameters() if p.requires_grad]


class SupernetTrainer(TrainerState):
    """Owns the optimizer, LR schedule and AMP state of a supernet run."""

    def __init__(self, space: SearchSpace, net: Supernet, env: DistEnv, *, train_all: bool,
                 seed: int, total_iters: int, lr: float = 0.25, min_lr: float = 5e-4,
                 momentum: float = 0.9, weight_decay: float = 4e-5, grad_clip: float = 5.0,
                 label_smooth: float = 0.1, amp: Amp | None = None,
                 bn_params: str = "indicator", train_classifier: bool = False):
        self.space, self.net, self.env = space, net, env
        self.train_all, self.seed = bool(train_all), int(seed)
        self.grad_clip = float(grad_clip)
        self.amp = amp if amp is not None else Amp("none", env.device)
        if train_all:
            for p in net.parameters():
                p.requires_grad_(True)
        else:
            freeze_for_bn_nas(space, net, bn_params, train_classifier)
        # Per (layer, op) trainable parameters, and the ones outside the layers: the
        # step touches only the path's lists, never scans every parameter.
        self.op_params = [[[p for p in op.parameters() if p.requires_grad] for op in layer.ops]
                          for layer in net.layers]
        in_layers = {id(p) for p in net.layers.parameters()}
        self.shared_params = [p for p in net.parameters()
                              if p.requires_grad and id(p) not in in_layers]
        trainable = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            param_groups_no_bn_decay(net, weight_decay, trainable, policy="conv+classifier"),
            lr=lr, momentum=momentum,
            foreach=True)
        self.schedule = LinearSchedule(lr, min_lr, total_iters)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smooth)

    def path_params(self, arch: Sequence[int]) -> list[nn.Parameter]:
        out = list(self.shared_params)
        for layer_params, op in zip(self.op_params, arch):
            if op != SKIP:
                out.extend(layer_params[op])
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor, it: int,
             arch: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Train iteration `it` on (x, y); returns (loss, top-1 correct count) on the device."""
        if arch is None:
            arch = sample_path(self.space, self.seed, it)
        params = self.path_params(arch)
        self.schedule.apply(self.optimizer, it)
        with self.amp.autocast():
            logits = self.net(x, arch)
            loss = self.criterion(logits, y)
        self.amp.scale(loss).backward()
        average_gradients(params, self.env)
        if self.grad_clip > 0:
            self.amp.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_value_(params, self.grad_clip, foreach=True)
        self.amp.step(self.optimizer)
        self.amp.update()
        # Only the path's parameters can hold a gradient; clearing them to None (not
        # zero) keeps SGD from touching these ops in steps that do not sample them.
        for p in params:
            p.grad = None
        with torch.no_grad():
            correct = logits.argmax(1).eq(y).sum()
        return loss.detach(), correct
