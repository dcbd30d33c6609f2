"""Stage 1: train the one-shot supernet, BN-NAS style (only indicator BNs) or SPOS (--train-all).

    torchrun --nproc_per_node=8 supernet/main.py --train_dir /data/imagenet/train
    python3 -m torch.distributed.launch --nproc_per_node=8 supernet/main.py --train_dir ...
    python3 supernet/main.py --train_dir data/imagefolder/train --input-size 32 ...

Rerunning the same command resumes from --checkpoint (a finished run says so and exits 0).
Settings can come from a YAML file (`--config configs/bnnas_supernet_imagenet.yaml`, flags
override it); every run writes its resolved settings beside the checkpoint
(checkpoint.config.yaml), which `--config` reruns. `--plugin FILE.py` imports a file that
registers a search space or dataset first.

The flags are utils/train/supernet_args.py's, the run utils/train/supernet_run.py's, its
loop utils/train/loop.py's.
"""
from __future__ import annotations

import argparse
import sys

from utils.cli.common import main_guard
from utils.plugins import load_plugins_from_argv
from utils.train.config import SupernetConfig
from utils.train.supernet_args import build_parser, check_args
from utils.train.supernet_run import run_supernet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    load_plugins_from_argv(argv)  # first: plug-ins add choices to the flags
    return check_args(build_parser().parse_args(argv))


@main_guard
def main(argv: list[str] | None = None) -> int:
    return run_supernet(SupernetConfig.from_args(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
