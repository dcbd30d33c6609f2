"""Stage 1's training pieces: one supernet step, BN-NAS (indicator BNs only) or SPOS
(--train-all), and the task the shared loop (utils/train/loop.py) drives.

    path = sample_path(space, seed, it)          # same on every rank, resumable
    trainer = SupernetTrainer(space, net, env, train_all=False, ...)
    loss, correct = trainer.step(x, y, it)        # tensors on the device, no host sync
    task = SupernetTask(trainer, loader, env, ...)   # batches, steps and checkpoints

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

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.checkpoints import io as ckpt
from utils.dist import DistEnv, average_gradients
from utils.spaces import SKIP, SearchSpace, SpaceConfig, Supernet
from utils.train.amp import Amp
from utils.train.config import SupernetConfig, saved_args
from utils.train.loop import Task
from utils.train.rng import rng_state
from utils.train.schedule import LinearSchedule, param_groups_no_bn_decay
from utils.train.state import TrainerState


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


class SupernetTask(Task):
    """Stage 1 for the loop: the sampler's batches, a supernet step, the checkpoint.

    `identity` (class names and data fingerprint) goes into every checkpoint; `dump`, a
    list, collects each step's sample indices (a test hook, --dump-dir)."""

    def __init__(self, trainer: SupernetTrainer, loader, env: DistEnv, *,
                 config: SupernetConfig, space_cfg: SpaceConfig, num_samples: int,
                 identity: dict, channels_last: bool = False, dump: list | None = None):
        self.trainer, self.net, self.loader, self.env = trainer, trainer.net, loader, env
        self.config, self.space_cfg = config, space_cfg
        self.num_samples, self.identity = num_samples, identity
        self.channels_last, self.dump = channels_last, dump
        self.epoch = 0

    def batches(self, epoch: int, step0: int):
        self.loader.set_epoch(epoch, step0)
        self.epoch = epoch
        return self.loader

    def step(self, batch, it: int):
        x, y = self.loader.prepare(batch, device=self.env.device,
                                   channels_last=self.channels_last)
        if self.dump is not None:
            spe = self.config.steps_per_epoch
            self.dump.append(self.loader.sampler.batch_indices(self.epoch, it % spe))
        return self.trainer.step(x, y, it)

    def lr_at(self, it: int) -> float:
        return self.trainer.schedule.lr_at(it)

    def save(self, it: int, train_time: float, best: bool = False,
             eval_pending: bool = False) -> None:
        if not self.env.is_main:
            return
        c, spe = self.config, self.config.steps_per_epoch
        state = dict(kind="supernet", config=self.space_cfg.to_dict(),
                     state_dict=ckpt.clean_state_dict(self.net.state_dict()),
                     train_all=c.train_all, trainable=c.trainable(), iter=it,
                     epoch=it // spe, seed=c.seed, total_iters=c.total_iters,
                     steps_per_epoch=spe, batch_size=c.batch_size,
                     sampler=dict(seed=c.seed, epoch=it // spe, step=it % spe,
                                  steps_per_epoch=spe, global_batch=c.batch_size,
                                  num_samples=self.num_samples),
                     rng=rng_state(), args=saved_args(c), finished=it >= c.total_iters,
                     **self.trainer.state_dict(), train_time=train_time, **self.identity)
        ckpt.save_atomic(state, c.checkpoint)

    def loop_ended(self, it: int) -> None:
        if self.dump is None:
            return
        os.makedirs(self.config.dump_dir, exist_ok=True)
        torch.save(dict(indices=self.dump, state_dict=self.net.state_dict(), iter=it),
                    os.path.join(self.config.dump_dir, f"rank{self.env.rank}.pt"))
