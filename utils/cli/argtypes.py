"""argparse `type=` helpers and the one-line-error parser, shared by every script.

Light on purpose (no torch): `utils/data/demo.py` and `tools/demo_data.py` use it too; `utils.cli.common` re-exports it.

    p = ArgumentParser(...)                           # errors: `error: ...`, exit code 2
    p.add_argument("--seed", type=seed_int)           # 0 <= seed < 2**32
    p.add_argument("--lr", type=nonneg_float)         # finite, >= 0
    p.add_argument("--smooth", type=fraction)         # finite, in [0, 1)
    p.add_argument("--n", type=int_range(1, 100))     # any other range
    p.add_argument("--x", type=finite_float(0, 1, lo_open=True))   # (0, 1]
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

# ---- numeric flags: parse-time checks shared by every script ---------------------------
#
# Every numeric flag of every script goes through one of these `type=` helpers, so a bad
# value (not a number, nan/inf, outside its range) is refused while parsing, in one line
# (`error: argument --flag: ...`, exit code 2; see ArgumentParser below).

SEED_MAX = 2 ** 32 - 1      # numpy's global seeding takes 0 <= seed < 2**32
COUNT_MAX = 2 ** 62         # iteration/step counts: stay far inside int64
BATCH_MAX = 2 ** 20         # global batch size
WORKERS_MAX = 256           # data loader processes
POPULATION_MAX = 100_000    # EA population / candidates per generation
INPUT_SIZE_RANGE = (8, 4096)
WIDTH_MULT_MAX = 16.0
CLASSES_RANGE = (2, 100_000)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `error: ...` on stderr, exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        # A parser given --config (utils.cli.config_file.add_config_arg) reads that file first:
        # its values become the defaults, so the command line's flags override them.
        if getattr(self, "config_script", None) is not None:
            from utils.cli.config_file import parse_with_config
            return parse_with_config(self, args, namespace)
        return super().parse_args(args, namespace)


def _g(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_g(lo)}, {_g(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_g(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_g(hi)}"
    return "a number"


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: a base-10 integer in [lo, hi] (None: unbounded on that side)."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            shown = str(value) if len(str(value)) <= 24 else f"{str(value)[:20]}... " \
                                                              f"({len(str(value))} digits)"
            raise argparse.ArgumentTypeError(f"must be an integer {_range_text(lo, hi)}, "
                                              f"got {shown}")
        return value

    parse.__name__ = "int"
    return parse


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in the range (open ends with lo_open / hi_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if ((lo is not None and (value < lo or (lo_open and value == lo)))
                or (hi is not None and (value > hi or (hi_open and value == hi)))):
            raise argparse.ArgumentTypeError(
                f"must be {_range_text(lo, hi, lo_open, hi_open)}, got {_g(value)}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1, COUNT_MAX)
nonneg_int = int_range(0, COUNT_MAX)
seed_int = int_range(0, SEED_MAX)
batch_size_int = int_range(1, BATCH_MAX)
workers_int = int_range(0, WORKERS_MAX)
population_int = int_range(1, POPULATION_MAX)
nonneg_float = finite_float(0.0)
fraction = finite_float(0.0, 1.0, hi_open=True)          # [0, 1): label smoothing, dropout
probability = finite_float(0.0, 1.0)                     # [0, 1]
momentum_float = finite_float(0.0, 1.0, hi_open=True)    # SGD momentum in [0, 1)


def nonempty_str(text: str) -> str:
    """argparse type: a string that is not empty (e.g. a path)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


nonempty_str.__name__ = "str"
