"""Command-line plumbing shared by every script: space flags and one-line errors."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable

from .spaces import ArchError, ConfigError, make_config, parse_skips

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


# Errors that are the user's to fix: reported without a traceback.
USER_ERRORS = (UserError, ArchError, ConfigError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)


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
            fail(msg.splitlines()[0] if msg else type(e).__name__)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def add_space_args(parser: argparse.ArgumentParser, classes_default: int | None = 1000) -> None:
    g = parser.add_argument_group("search space")
    g.add_argument("--space", default="mobilenet", choices=["mobilenet", "shufflenet"],
                   help="search space (default: mobilenet, the published one)")
    g.add_argument("--input-size", "--input_size", type=int, default=224, dest="input_size",
                   help="input resolution (default: 224)")
    g.add_argument("--width-mult", "--width_mult", type=float, default=1.0, dest="width_mult",
                   help="channel width multiplier (default: 1.0)")
    g.add_argument("--classes", type=int, default=classes_default,
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
