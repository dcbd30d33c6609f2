#!/usr/bin/env python3
"""Write Fashion-MNIST as an RGB ImageFolder tree, or regenerate the committed slice.

    python3 tools/demo_data.py --out data/imagefolder --size 32
    python3 tools/demo_data.py --make-slice          # needs dataset-fashion-mnist

The slice, the Debian reader and the tree writer live in utils/data/demo.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from utils.cli.argtypes import WORKERS_MAX, ArgumentParser, int_range, nonempty_str, seed_int
from utils.data.demo import (DEBIAN_DIR, DEBIAN_DIR_ENV, SLICE_PATH, DemoDataError, describe,
                             make_slice, write_tree)

_Parser = ArgumentParser  # one line (`error: ...`), exit code 2, no usage dump
_positive = int_range(1, 10 ** 9)


def _path(text: str) -> Path:
    """A non-empty path (Path("") would silently mean the current folder)."""
    return Path(nonempty_str(text))


_path.__name__ = "path"


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="demo_data",
                description="Write Fashion-MNIST as an RGB ImageFolder tree "
                            "(train/ and val/), or regenerate the committed slice.")
    p.add_argument("--out", type=_path, help="destination directory for the ImageFolder tree")
    p.add_argument("--size", type=int_range(1, 1024), default=32,
                   help="output side length in pixels, 1..1024 (default 32)")
    p.add_argument("--train-per-class", type=_positive, default=None,
                   help="train images per class (default: all in the source)")
    p.add_argument("--val-per-class", type=_positive, default=None,
                   help="val images per class (default: all in the source)")
    p.add_argument("--source", choices=("slice", "debian", "auto"), default="auto",
                   help="slice = committed npz, debian = full dataset-fashion-mnist package, auto = slice")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed for per-class subsampling, 0 <= seed < 2**32 (default 0)")
    p.add_argument("--workers", type=int_range(1, WORKERS_MAX), default=None,
                   help="PNG writer processes (default: min(8, CPUs))")
    p.add_argument("--debian-dir", type=_path, default=None,
                   help=f"directory with the idx .gz files (default ${DEBIAN_DIR_ENV} or {DEBIAN_DIR})")
    p.add_argument("--slice-path", type=_path, default=SLICE_PATH,
                   help="npz slice to read, or to write with --make-slice")
    p.add_argument("--make-slice", action="store_true",
                   help="regenerate the slice npz (600 train / 200 val per class) from the Debian files")
    args = p.parse_args(argv)
    if args.out is None and not args.make_slice:
        p.error("--out is required (or use --make-slice)")

    try:
        if args.make_slice:
            path = make_slice(args.debian_dir, args.slice_path, seed=args.seed)
            print(f"demo_data: wrote slice {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if args.out is not None:
            summary = write_tree(args.out, size=args.size, train_per_class=args.train_per_class,
                                 val_per_class=args.val_per_class, source=args.source,
                                 debian_dir=args.debian_dir, slice_path=args.slice_path,
                                 seed=args.seed, workers=args.workers)
            print(describe(summary))
    except DemoDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo_data: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
