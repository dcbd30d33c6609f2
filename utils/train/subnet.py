"""One retraining step of a standalone subnet (every parameter trained), and its state.

    trainer = SubnetTrainer(net, env, total_iters=300_000, amp=Amp("bf16", env.device))
    loss, correct = trainer.step(x, y, it)     # tensors on the device, no host sync
    sync_buffers(trainer.net, env)             # before validating or saving

Recipe (docs/method.md, "Recipes"): SGD momentum 0.9, lr linear per iteration from 0.5 to
0, weight decay 4e-5 on the 4-D conv weights only (what the original's decay group
amounts to in its retrained network; `decay_policy` chooses others), label smoothing 0.1, gradients
clipped BY NORM to 5 (the supernet clips by value). With several ranks the model is
wrapped in torch's DistributedDataParallel: every parameter is used in every step, so
the bucketed all-reduce overlaps with the backward pass.

BN running statistics are not broadcast every step (each rank keeps its own, as the
reference's Apex DDP did); `sync_buffers` copies rank 0's to every rank before a
validation, so that the distributed result is the one of the checkpoint rank 0 saves.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn

from utils.dist import DistEnv
from utils.train.engine import Amp, LinearSchedule, TrainerState, param_groups_no_bn_decay


class SubnetTrainer(TrainerState):
    """Owns the (DDP-wrapped) model, optimizer, LR schedule and AMP state of a retrain."""

    def __init__(self, net: nn.Module, env: DistEnv, *, total_iters: int, lr: float = 0.5,
                 final_lr: float = 0.0, momentum: float = 0.9, weight_decay: float = 4e-5,
                 grad_clip: float = 5.0, label_smooth: float = 0.1, amp: Amp | None = None,
                 channels_last: bool = False, decay_policy: str = "conv"):
        self.env = env
        self.net = net.to(env.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.amp = amp if amp is not None else Amp("none", env.device)
        self.grad_clip = float(grad_clip)
        self.optimizer = torch.optim.SGD(param_groups_no_bn_decay(self.net, weight_decay,
                                                                  policy=decay_policy),
                                         lr=lr, momentum=momentum, foreach=True)
        self.schedule = LinearSchedule(lr, final_lr, total_iters)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smooth)
        self.model: nn.Module = self.net
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)

    def step(self, x: torch.Tensor, y: torch.Tensor, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train iteration `it` (0-based); returns (loss, top-1 correct count) on the device."""
        self.model.train()
        self.schedule.apply(self.optimizer, it)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            logits = self.model(x)
            loss = self.criterion(logits, y)
        self.amp.scale(loss).backward()
        if self.grad_clip > 0:
            self.amp.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip, foreach=True)
        self.amp.step(self.optimizer)
        self.amp.update()
        with torch.no_grad():
            correct = logits.argmax(1).eq(y).sum()
        return loss.detach(), correct


def sync_buffers(net: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BN running statistics)."""
    if not env.distributed:
        return
    for buf in net.buffers():
        torch_dist.broadcast(buf, src=src)
