"""Command-line plumbing shared by every script: space flags and one-line errors."""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from typing import Callable

from utils.cli.argtypes import (BATCH_MAX, CLASSES_RANGE, COUNT_MAX, INPUT_SIZE_RANGE,  # noqa: F401
                       POPULATION_MAX, SEED_MAX, WIDTH_MULT_MAX, WORKERS_MAX, ArgumentParser,
                       batch_size_int, finite_float, fraction, int_range, momentum_float,
                       nonempty_str, nonneg_float, nonneg_int, population_int, positive_int,
                       probability, seed_int, workers_int)
from utils.errors import ArchError, ConfigError, UserError  # noqa: F401 (re-exported)
from utils.spaces import DEFAULT_SPACE, SPACES, make_config, parse_skips

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Errors that are the user's to fix: reported without a traceback.
USER_ERRORS = (UserError, ArchError, ConfigError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)
# OSErrors of the disk itself (full, over quota, read-only): reported in one line too.
DISK_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG")
                        if hasattr(errno, n))


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main_guard(fn: Callable) -> Callable:
    """Run `fn`; user errors become `error: ...` on stderr and exit 2, Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            msg = str(e)
            if isinstance(e, OSError) and e.filename and e.strerror:
                msg = f"{e.strerror}: {e.filename}"
            fail(msg.splitlines()[0] if msg else type(e).__name__,
                 getattr(e, "exit_code", 2))
        except OSError as e:
            # A full, read-only or over-quota disk is the user's to fix: one line too.
            if e.errno not in DISK_ERRNOS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            fail(f"{e.strerror or e}{where}")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def add_space_args(parser: argparse.ArgumentParser, classes_default: int | None = 1000) -> None:
    """The space flags; --space offers the spaces registered when the parser is built
    (so a --plugin file loaded before that adds its own)."""
    g = parser.add_argument_group("search space")
    g.add_argument("--space", default=DEFAULT_SPACE, choices=SPACES.names(),
                   help=f"search space (default: {DEFAULT_SPACE}, the published one)")
    g.add_argument("--input-size", "--input_size", type=int_range(*INPUT_SIZE_RANGE),
                   default=224, dest="input_size", help="input resolution (default: 224)")
    g.add_argument("--width-mult", "--width_mult", default=1.0, dest="width_mult",
                   type=finite_float(0.0, WIDTH_MULT_MAX, lo_open=True),
                   help="channel width multiplier (default: 1.0)")
    g.add_argument("--classes", type=int_range(*CLASSES_RANGE), default=classes_default,
                   help="number of classes" + (f" (default: {classes_default})"
                                               if classes_default else " (default: from data)"))
    g.add_argument("--stem-stride", "--stem_stride", type=int, default=2, dest="stem_stride",
                   choices=[1, 2], help="stride of the stem conv; 1 suits small inputs (default: 2)")
    g.add_argument("--fixed-skips", "--fixed_skips", default=None, dest="fixed_skips",
                   help="layers forced to skip, e.g. '1,5,6,9' or 'none' (default: the space's)")


def config_from_args(args: argparse.Namespace, classes: int | None = None):
    return make_config(args.space, fixed_skips=parse_skips(args.fixed_skips),
                       input_size=args.input_size, width_mult=args.width_mult,
                       classes=classes if classes is not None else args.classes,
                       stem_stride=args.stem_stride)
