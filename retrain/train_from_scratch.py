"""Stage 3: retrain the found architecture from scratch, or evaluate a retrained checkpoint.

    torchrun --nproc_per_node=8 retrain/train_from_scratch.py \
        --train_dir /data/imagenet/train --test_dir /data/imagenet/val --arch-from search/log
    python3 -m torch.distributed.launch --nproc_per_node=8 retrain/train_from_scratch.py \
        --train_dir ... --test_dir ... --model_id "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
    python3 retrain/train_from_scratch.py --eval --eval-resume eval-retrain/best.pth.tar \
        --test_dir /data/imagenet/val

Everything goes to `eval-<--save>/` (checkpoint.pth.tar, best.pth.tar, metrics.jsonl,
log.txt, result.json); rerunning the same command resumes (a finished run reports its
result and exits 0). While a run trains, eval-NAME/.lock names its PID: a second run on
the same folder is refused; resuming on other training data needs --allow-data-change.
Settings can come from `--config FILE.yaml` (e.g. configs/retrain_imagenet.yaml; flags
override it); training writes its resolved settings to eval-NAME/config.yaml (--eval with
--save: eval-NAME/eval_config.yaml), which `--config` reruns. `--plugin FILE.py` imports a
file that registers a search space or dataset first.

The flags are utils/train/retrain_args.py's, the run utils/train/retrain_run.py's (--eval:
utils/train/retrain_eval.py), its loop utils/train/loop.py's.
"""
from __future__ import annotations

import argparse
import sys

from utils.cli.common import main_guard
from utils.plugins import load_plugins_from_argv
from utils.train.config import RetrainConfig
from utils.train.retrain_args import build_parser, check_args
from utils.train.retrain_run import run_retrain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    load_plugins_from_argv(argv)  # first: plug-ins add choices to the flags
    return check_args(build_parser().parse_args(argv))


@main_guard
def main(argv: list[str] | None = None) -> int:
    return run_retrain(RetrainConfig.from_args(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
