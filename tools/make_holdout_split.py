#!/usr/bin/env python3
"""Carve a class-balanced, seeded held-out split from an ImageFolder train set.

    python3 tools/make_holdout_split.py --train_dir /data/imagenet/train \\
        --out /data/imagenet_split --total 50000 [--seed 0]
    python3 tools/make_holdout_split.py --train_dir ... --out ... --per-class 50

Writes OUT/train/<class>/<file> (the rest: the supernet's --train_dir) and
OUT/holdout/<class>/<file> (held out: SPOS scoring's --test_dir) as symlinks to the
source images, and OUT/split.json. --total N holds out floor(N/C) per class, the
remainder one each in classes drawn with the seed. Built atomically; a rerun of the
same split is a no-op, another split over an existing OUT is refused (--force replaces
it). The logic lives in utils/data/holdout.py.
"""
from __future__ import annotations

import argparse
import sys


from utils.files import check_output_dir
from utils.cli.common import (UserError, batch_size_int, main_guard, positive_int,
                       seed_int)
from utils.data.holdout import SUPERNET_BATCH, make_split, summary_lines


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_dir", "--train-dir", dest="train_dir", default=None,
                   help="ImageFolder train set to split (<dir>/<class>/<image>)")
    p.add_argument("--out", default=None, help="output folder: gets train/, holdout/, split.json")
    p.add_argument("--total", type=positive_int, default=None,
                   help="images to hold out in all, spread evenly over the classes")
    p.add_argument("--per-class", "--per_class", dest="per_class", type=positive_int,
                   default=None,
                   help="images to hold out of every class")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds which images are held out (0 <= seed < 2**32)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing split in --out (made by this tool) with this one")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=batch_size_int,
                   default=SUPERNET_BATCH,
                   help="global batch for the printed supernet iterations-per-epoch hint")
    return p


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train_dir is None:
        raise UserError("--train_dir is required (the ImageFolder train set to split)")
    if args.out is not None:  # empty, a file, under a file, unwritable: refused now
        check_output_dir(args.out, "--out", built_beside=True)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    result = make_split(args.train_dir, args.out, total=args.total, per_class=args.per_class,
                        seed=args.seed, force=args.force)
    for line in summary_lines(result, args.batch_size):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
