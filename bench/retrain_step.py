"""Bench: images/second of one retraining step (forward + backward + SGD) of a subnet.

The step is the retrain script's own (`utils.train.subnet.SubnetTrainer`: label smoothing,
grad-norm clip, SGD with momentum and weight decay), timed on a fixed random batch with
and without channels_last and bf16 autocast. CPU defaults are tiny (batch 1, one timed
step after one warm-up) because a CPU without native bf16 (AVX2 only) emulates it very
slowly; raise --batch/--steps for steadier numbers.

    python3 bench/retrain_step.py                       # CPU, 224x224, batch 1 (~1-2 min)
    python3 bench/retrain_step.py --device cuda --batch 128
    python3 bench/retrain_step.py --input-size 32 --width-mult 0.5 --classes 10 --json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time


import torch

from utils.cli.common import UserError, add_space_args, config_from_args, main_guard
from utils.dist import DistEnv
from utils.train.amp import Amp
from utils.flops.table import load_table
from utils.spaces import get_space
from utils.checkpoints.subnet import published_arch
from utils.train.subnet import SubnetTrainer

MODES = {  # name -> (amp, channels_last)
    "fp32": ("none", False),
    "fp32+cl": ("none", True),
    "bf16": ("bf16", False),
    "bf16+cl": ("bf16", True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Images/s of the retrain step of a subnet.")
    add_space_args(p)
    p.add_argument("--arch", default=None,
                   help="architecture (default: the published one of the space)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 1 CPU, 128 CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 1 CPU, 30 CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps (default: 1 CPU, 10 CUDA)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda asked for but no CUDA device is available")
    args.batch = args.batch or (128 if cuda else 1)
    args.steps = args.steps or (30 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise UserError(f"unknown mode '{unknown[0]}' (choose from {', '.join(MODES)})")
    if min(args.batch, args.steps) < 1 or args.warmup < 0:
        raise UserError("--batch and --steps must be >= 1, --warmup >= 0")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_mode(space, arch, device: torch.device, amp_mode: str, channels_last: bool,
               batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    env = DistEnv(device=device)
    net = space.subnet(arch)
    trainer = SubnetTrainer(net, env, total_iters=10 ** 6, amp=Amp(amp_mode, device),
                            channels_last=channels_last)
    s = space.config.input_size
    x = torch.randn(batch, 3, s, s, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, space.config.classes, (batch,), device=device)
    for it in range(warmup):
        trainer.step(x, y, it)
    _sync(device)
    t0 = time.perf_counter()
    for it in range(warmup, warmup + steps):
        loss, _ = trainer.step(x, y, it)
    _sync(device)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"non-finite loss in mode amp={amp_mode} channels_last={channels_last}")
    return dict(amp=amp_mode, channels_last=channels_last, seconds=seconds,
                ms_per_step=1000.0 * seconds / steps, images_per_s=batch * steps / seconds)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    space = get_space(cfg)
    arch = space.parse(args.arch or published_arch(cfg.space))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    table = load_table(cfg)
    results = []
    for name in args.modes:
        amp_mode, cl = MODES[name]
        results.append(dict(mode=name, **bench_mode(space, arch, device, amp_mode, cl,
                                                    args.batch, args.steps, args.warmup)))
    base = next((r["images_per_s"] for r in results if r["mode"] == "fp32"), None)
    for r in results:
        r["speedup_vs_fp32"] = r["images_per_s"] / base if base else None
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    return dict(bench="retrain_step", device=str(device), device_name=name,
                torch=torch.__version__, config=cfg.to_dict(), arch=space.format(arch),
                flops=table.flops_of(arch), params=table.params_of(arch), batch=args.batch,
                steps=args.steps, warmup=args.warmup, results=results)


def format_table(out: dict) -> str:
    lines = [f"retrain step (forward+backward+SGD) on {out['device']} ({out['device_name']}), "
             f"torch {out['torch']}",
             f"arch {out['arch']}: {out['flops'] / 1e6:.2f}M FLOPs, {out['params'] / 1e6:.2f}M "
             f"params, input {out['config']['input_size']}, batch {out['batch']}, "
             f"{out['steps']} timed steps after {out['warmup']} warm-up",
             f"{'mode':<9} {'amp':<5} {'channels_last':<13} {'images/s':>10} {'ms/step':>9} "
             f"{'vs fp32':>8}"]
    for r in out["results"]:
        sp = "-" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x"
        lines.append(f"{r['mode']:<9} {r['amp']:<5} {str(r['channels_last']):<13} "
                     f"{r['images_per_s']:>10.1f} {r['ms_per_step']:>9.1f} {sp:>8}")
    return "\n".join(lines)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    print(json.dumps(out) if args.json else format_table(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
