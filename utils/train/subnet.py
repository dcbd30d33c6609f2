"""Stage 3's training pieces: one retraining step of a standalone subnet (every parameter
trained), and the task the shared loop (utils/train/loop.py) drives.

    trainer = SubnetTrainer(net, env, total_iters=300_000, amp=Amp("bf16", env.device))
    loss, correct = trainer.step(x, y, it)     # tensors on the device, no host sync
    sync_buffers(trainer.net, env)             # before validating or saving
    task = SubnetTask(trainer, loader, val_loader, env, ...)  # steps, validation, saves

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

import inspect

import torch
import torch.distributed as torch_dist
from torch import nn

from utils import files
from utils.checkpoints import io as ckpt
from utils.dist import DistEnv, all_gather_objects
from utils.spaces import SpaceConfig
from utils.train.amp import Amp
from utils.train.config import RetrainConfig, saved_args
from utils.train.evaluate import evaluate
from utils.train.loop import Task, Validation
from utils.train.rng import rng_state
from utils.train.schedule import LinearSchedule, param_groups_no_bn_decay
from utils.train.state import TrainerState


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
            # Each rank keeps its own BN running statistics (as the original), so buffers are
            # not broadcast in forward. Newer PyTorch renames the switch and warns about the
            # old name on every launch: use whichever this PyTorch has.
            sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                    inspect.signature(nn.parallel.DistributedDataParallel).parameters
                    else {"broadcast_buffers": False})
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=ids, gradient_as_bucket_view=True, **sync)

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


def batches_outside_rng(loader):
    """Iterate `loader` without touching the global CPU RNG stream.

    Starting a DataLoader iterator draws a base seed from the global RNG, which dropout
    also uses on CPU; a resumed run starts its iterators at other points than an
    uninterrupted one, so drawing it outside the stream keeps the two runs identical.
    """
    it = iter(loader)
    with torch.random.fork_rng(devices=[]):
        first = next(it, None)
    if first is None:
        return
    yield first
    yield from it


class SubnetTask(Task):
    """Stage 3 for the loop: steps, validations (tracking the best) and the checkpoints
    checkpoint.pth.tar and best.pth.tar of eval-NAME/.

    `best` (top1, top5, iters) and `last_eval` continue a resumed run's; `record` is what
    every checkpoint holds besides the weights and state (class names, data fingerprint,
    FLOPs and params)."""

    def __init__(self, trainer: SubnetTrainer, loader, val_loader, env: DistEnv, *,
                 config: RetrainConfig, space_cfg: SpaceConfig, arch, amp: Amp,
                 channels_last: bool, ckpt_path: str, best_path: str, record: dict,
                 best: dict, last_eval: dict):
        self.trainer, self.net, self.env = trainer, trainer.net, env
        self.loader, self.val_loader = loader, val_loader
        self.config, self.space_cfg, self.arch = config, space_cfg, tuple(arch)
        self.amp, self.channels_last = amp, channels_last
        self.ckpt_path, self.best_path, self.record = ckpt_path, best_path, record
        self.best, self.last_eval = dict(best), dict(last_eval)

    def batches(self, epoch: int, step0: int):
        self.loader.set_epoch(epoch, step0)
        return batches_outside_rng(self.loader)

    def step(self, batch, it: int):
        x, y = self.loader.prepare(batch, device=self.env.device,
                                   channels_last=self.channels_last)
        return self.trainer.step(x, y, it)

    def lr_at(self, it: int) -> float:
        return self.trainer.schedule.lr_at(it)

    def evaluate(self, it: int) -> Validation:
        files.fault("retrain-validate")
        sync_buffers(self.net, self.env)
        with torch.random.fork_rng(devices=[]):  # see batches_outside_rng
            res = evaluate(self.net, self.val_loader, self.env, amp=self.amp,
                           channels_last=self.channels_last)
        improved = res.top1 > self.best["top1"]
        if improved:
            self.best = dict(top1=res.top1, top5=res.top5, iters=it)
        self.last_eval = dict(top1=res.top1, top5=res.top5, loss=res.loss, iters=it)
        best = self.best
        msg = (f"iteration {it}/{self.config.total_iters} (epoch "
               f"{it / self.config.steps_per_epoch:.2f}): valid_acc_top1 {res.top1:.4f} "
               f"valid_acc_top5 {res.top5:.4f} valid_loss {res.loss:.4f}; best top-1 "
               f"{best['top1']:.4f} at {best['iters']}")
        return Validation(msg, dict(valid_acc_top1=res.top1, valid_acc_top5=res.top5,
                                    valid_loss=res.loss, best_acc_top1=best["top1"]),
                          improved)

    def save(self, it: int, train_time: float, best: bool = False,
             eval_pending: bool = False) -> None:
        rngs = all_gather_objects(rng_state(), self.env)
        if not self.env.is_main:
            return
        c = self.config
        state = dict(kind="subnet", config=self.space_cfg.to_dict(), arch=list(self.arch),
                     state_dict=ckpt.clean_state_dict(
                         {k: v.detach().cpu() for k, v in self.net.state_dict().items()}),
                     iters=it, epoch=it // c.steps_per_epoch, total_iters=c.total_iters,
                     steps_per_epoch=c.steps_per_epoch, batch_size=c.batch_size, seed=c.seed,
                     best_acc_top1=self.best["top1"], best_acc_top5=self.best["top5"],
                     best_iters=self.best["iters"], last_eval=dict(self.last_eval),
                     rng=rngs[0], rng_per_rank=rngs, args=saved_args(c),
                     train_time=train_time, finished=it >= c.total_iters,
                     eval_pending=eval_pending, **self.record, **self.trainer.state_dict())
        if best:
            # best.pth.tar first, then the checkpoint that records it: a crash in between
            # leaves best ahead of the checkpoint, which reconcile_best sorts out on resume.
            ckpt.save_atomic(state, self.best_path)
            files.fault("retrain-after-best")
        ckpt.save_atomic(state, self.ckpt_path)
