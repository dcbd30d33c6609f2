#!/usr/bin/env python3
"""Fingerprint of 20 training steps on this machine: compare it across machines.

    python3 tools/determinism_check.py                 # one line: capability, threads, hash
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python3 tools/determinism_check.py

Training here is bit-reproducible on one machine, but floating-point results depend on
the CPU kernels PyTorch dispatches to (ATen's vectorised kernels and oneDNN's
convolutions pick AVX2, AVX-512 or AMX code at run time), on the number of threads (the
order of parallel sums), and on the PyTorch build. Two machines whose fingerprints agree
train the demo to the same weights; pinning the instruction set to one both have (the
environment variables above) makes an AVX-512 machine agree with an AVX2 one.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys


import torch

from utils.cli.common import main_guard


def environment() -> dict:
    """What decides the floating-point results of a CPU run (recorded by the demo)."""
    return dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                threads=torch.get_num_threads(),
                onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
                aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY", "default"))


def fingerprint(steps: int = 20) -> tuple[float, str]:
    """(last loss, sha256 prefix of the weights) after `steps` seeded training steps."""
    from utils.dist import DistEnv
    from utils.spaces import get_space, make_config
    from utils.train.subnet import SubnetTrainer
    torch.manual_seed(0)
    space = get_space(make_config("mobilenet", input_size=24, width_mult=0.5, classes=10,
                                  stem_stride=1))
    net = space.subnet(space.parse("5 -1 0 2 2 -1 -1 4 4 -1 0 2 0 0 0 0 0 0 0 0 0"),
                       dropout=0.0)
    trainer = SubnetTrainer(net, DistEnv(), total_iters=steps, lr=0.05)
    g = torch.Generator().manual_seed(1)
    loss = torch.zeros(())
    for it in range(steps):
        x = torch.randn(64, 3, 24, 24, generator=g)
        y = torch.randint(0, 10, (64,), generator=g)
        loss, _ = trainer.step(x, y, it)
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters()))
    return float(loss), h.hexdigest()[:16]


@main_guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo uses 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    loss, digest = fingerprint()
    env = environment()
    print(f"torch {env['torch']}, CPU kernels {env['cpu_capability']} (oneDNN max ISA "
          f"{env['onednn_max_isa']}), {env['threads']} thread(s): loss {loss:.9f}, "
          f"weights {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
