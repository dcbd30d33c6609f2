"""Benchmark: one supernet training step, BN-NAS (indicator BNs only) vs SPOS (all parameters).

Same supernet weights, batch, inputs and sequence of paths for both modes; the step is the
one `supernet/main.py` runs (forward, backward, gradient clipping, SGD, grads -> None).
Reports the median step time, the BN-only / all-params ratio, and memory: peak CUDA
memory on a GPU; on CPU the bytes autograd saves for backward plus gradients and
optimizer state (the part that differs between the modes).

    python3 bench/supernet_step.py                  # CPU, demo and 224 sizes
    python3 bench/supernet_step.py --json
    python3 bench/supernet_step.py --device cuda --amp bf16 --batch-224 128
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time


import torch

from utils.cli.common import main_guard
from utils.dist import DistEnv
from utils.train.amp import Amp
from utils.spaces import get_space, make_config
from utils.train.supernet import SupernetTrainer, sample_path

SIZES = {
    # name: (space config kwargs, default batch on CPU, default batch on CUDA)
    "demo": (dict(input_size=32, width_mult=0.5, classes=10, stem_stride=1), 64, 256),
    "imagenet": (dict(input_size=224, width_mult=1.0, classes=1000, stem_stride=2), 8, 128),
    "tiny": (dict(input_size=32, width_mult=0.25, classes=4, stem_stride=2), 4, 4),
}


class SavedBytes:
    """Bytes of distinct storages autograd keeps for backward during one forward."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            self.seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def warmup_paths(space, device: torch.device, n: int) -> list[tuple[int, ...]]:
    """Paths run before timing. On CUDA: one per op index, so every (layer, op) has run
    once; cuDNN's first call of each new conv shape (heuristics, kernel loading) costs
    far more than a step and would otherwise land in the timed steps."""
    paths = [sample_path(space, 1, it) for it in range(n)]
    if device.type == "cuda":
        for op in range(space.num_ops):
            paths.append(tuple(op if op in space.allowed(i) else space.allowed(i)[0]
                               for i in range(space.num_layers)))
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(space, base_state: dict, train_all: bool, n_paths: int,
                 device: torch.device, amp_mode: str, channels_last: bool) -> SupernetTrainer:
    net = space.supernet()
    net.load_state_dict(base_state)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    return SupernetTrainer(space, net, DistEnv(device=device), train_all=train_all, seed=0,
                           total_iters=n_paths, amp=Amp(amp_mode, device))


def timed_step(trainer: SupernetTrainer, x, y, i: int, arch, device) -> tuple[float, float]:
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.step(x, y, i, arch=arch)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def memory(trainer: SupernetTrainer, x, y, arch, device: torch.device) -> dict:
    """What a mode keeps besides the weights: saved activations, grads, optimizer state."""
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        with trainer.amp.autocast():
            loss = trainer.criterion(trainer.net(x, arch), y)
    del loss
    params = trainer.path_params(arch)
    out = dict(saved_for_backward_mib=saved.total / 2 ** 20,
               grad_mib=sum(p.numel() * p.element_size() for p in params) / 2 ** 20,
               optimizer_state_mib=sum(t.numel() * t.element_size()
                                       for s in trainer.optimizer.state.values()
                                       for t in s.values() if torch.is_tensor(t)) / 2 ** 20)
    if device.type == "cuda":
        # Peak of one step above what was allocated before it, plus this mode's weights
        # and optimizer state (the other mode's model is resident too, so not the raw peak).
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.step(x, y, 0, arch=arch)
        _sync(device)
        step_peak = torch.cuda.max_memory_allocated(device) - before
        resident = sum(p.numel() * p.element_size() for p in trainer.net.parameters()) + \
            sum(b.numel() * b.element_size() for b in trainer.net.buffers())
        out["peak_cuda_mib"] = (resident + step_peak) / 2 ** 20 + out["optimizer_state_mib"]
    return out


def bench_size(name: str, batch: int, steps: int, warmup: int, device: torch.device,
               amp_mode: str, channels_last: bool) -> dict:
    cfg = make_config("mobilenet", **SIZES[name][0])
    space = get_space(cfg)
    torch.manual_seed(0)
    base_state = copy.deepcopy(space.supernet().state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.classes, (batch,), generator=g).to(device)
    warm = warmup_paths(space, device, warmup)
    paths = [sample_path(space, 0, it) for it in range(steps)]
    modes = {"bn_only": False, "all_params": True}
    trainers = {m: make_trainer(space, base_state, ta, len(warm) + steps, device, amp_mode,
                                channels_last) for m, ta in modes.items()}
    for i, arch in enumerate(warm):
        for t in trainers.values():
            t.step(x, y, i, arch=arch)
    # The modes alternate on the same path, so a busy machine slows both alike.
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for i, arch in enumerate(paths):
        for m, t in trainers.items():
            times[m].append(timed_step(t, x, y, len(warm) + i, arch, device))
    res: dict = {}
    for m, t in trainers.items():
        wall = [w for w, _ in times[m]]
        res[m] = dict(median_ms=1e3 * statistics.median(wall), min_ms=1e3 * min(wall),
                      median_cpu_ms=1e3 * statistics.median(c for _, c in times[m]),
                      steps=len(wall),
                      trainable=sum(p.numel() for p in t.net.parameters() if p.requires_grad),
                      **memory(t, x, y, paths[0], device))
    res["ratio"] = res["bn_only"]["median_ms"] / res["all_params"]["median_ms"]
    # Per path, then the median: robust to paths of very different cost.
    res["ratio_per_path_median"] = statistics.median(
        a[0] / b[0] for a, b in zip(times["bn_only"], times["all_params"]))
    # Process CPU time is robust to other load on a shared CPU box (not meaningful on GPU).
    res["ratio_cpu_time"] = res["bn_only"]["median_cpu_ms"] / res["all_params"]["median_cpu_ms"]
    res.update(config=cfg.describe(), batch=batch, steps=steps)
    return res


def table(results: dict, meta: dict) -> str:
    lines = [f"supernet step, BN-only (BN-NAS) vs all params (SPOS): device={meta['device']} "
             f"amp={meta['amp']} channels_last={meta['channels_last']} "
             f"threads={meta['threads']}", ""]
    mem_col = "peak CUDA MiB" if meta["device"].startswith("cuda") else "saved+grad+opt MiB"
    head = f"{'size':<10}{'batch':>6}  {'mode':<11}{'median ms':>10}{'min ms':>9}{mem_col:>20}"
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        for mode in ("bn_only", "all_params"):
            m = r[mode]
            mem = m.get("peak_cuda_mib", m["saved_for_backward_mib"] + m["grad_mib"]
                        + m["optimizer_state_mib"])
            lines.append(f"{name:<10}{r['batch']:>6}  {mode:<11}{m['median_ms']:>10.1f}"
                         f"{m['min_ms']:>9.1f}{mem:>20.1f}")
        extra = "" if meta["device"].startswith("cuda") else \
            f", by process CPU time {r['ratio_cpu_time']:.3f}"
        lines.append(f"{'':<18}ratio BN-only / all-params = {r['ratio']:.3f} "
                     f"(median per path {r['ratio_per_path_median']:.3f}{extra})")
        lines.append(f"{'':<18}{r['config']}")
    return "\n".join(lines)


@main_guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
    p.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=None, help="default: on for CUDA, off on CPU")
    p.add_argument("--sizes", default="demo,imagenet", help="comma list of: demo, imagenet, tiny")
    p.add_argument("--batch-demo", type=int, default=None)
    p.add_argument("--batch-224", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from utils.cli.common import UserError
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            raise UserError(f"unknown size '{s}' (choose from {', '.join(SIZES)})")
    gpu = device.type == "cuda"
    results = {}
    for name in sizes:
        batch = {"demo": args.batch_demo, "imagenet": args.batch_224}.get(name) or \
            SIZES[name][2 if gpu else 1]
        steps = args.steps or (2 if name == "tiny" else (30 if gpu else (6 if name == "imagenet" else 10)))
        warmup = 1 if name == "tiny" else args.warmup
        results[name] = bench_size(name, batch, steps, warmup, device, args.amp, channels_last)
    meta = dict(device=str(device) + (f" ({torch.cuda.get_device_name(device)})" if gpu else ""),
                amp=args.amp, channels_last=channels_last, threads=torch.get_num_threads(),
                torch=torch.__version__)
    if args.json:
        print(json.dumps(dict(meta=meta, results=results)))
    else:
        print(table(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
