"""Logging: one `logging` channel for every stage, printed by rank 0 only.

    from utils.logs import get_logger, setup_logging
    log = get_logger(__name__)
    setup_logging(rank=env.rank, file="run/log.txt")   # once, in the stage script
    log.info("iteration %d loss %.4f", it, loss)

Messages go out as plain text ("%(message)s", what the scripts always printed): info
to stdout, warnings (notes about locks, stale temp files, rebuilt tables, resumes) to
stderr. A log file, if given, gets the same lines with a timestamp. While a tqdm progress bar is
on screen, lines are written above it instead of through it. Other ranks log nothing
unless a record is marked `extra={"all_ranks": True}` (e.g. a rank naming its own error).
"""
from __future__ import annotations

import logging
import os
import sys

ROOT = "bnnas"
_OURS = "_bnnas_handler"


def get_logger(name: str | None = None) -> logging.Logger:
    """The project's logger, or a child of it (`utils.search.run` -> `bnnas.search.run`)."""
    if not name:
        return logging.getLogger(ROOT)
    if name.startswith("utils."):
        name = name[len("utils."):]
    return logging.getLogger(f"{ROOT}.{name}")


class RankZeroFilter(logging.Filter):
    def __init__(self, rank: int = 0):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or bool(getattr(record, "all_ranks", False))


class _BarAwareHandler(logging.StreamHandler):
    """Writes through tqdm.write while a bar is live, so the bar is redrawn below the line.

    Without a fixed stream it writes to whatever sys.stdout is at that moment (so pytest's
    capture, or a redirect set up after the logger, sees the lines)."""

    def __init__(self, stream=None):
        super().__init__(stream if stream is not None else sys.stdout)
        self._fixed = stream
        self._fixed_err = stream  # a fixed stream takes every level (tests, notebooks)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
                live = bool(getattr(tqdm, "_instances", None))
            except ImportError:
                live = False
            if self._fixed is not None:
                stream = self._fixed
            else:
                stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            if live:
                tqdm.write(msg, file=stream)
            else:
                stream.write(msg + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def setup_logging(rank: int = 0, file: str | None = None, level: int = logging.INFO,
                  stream=None) -> logging.Logger:
    """(Re)configure the project's logger; safe to call again (e.g. once the rank is known)."""
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if getattr(h, _OURS, False):
            logger.removeHandler(h)
            h.close()
    logger.setLevel(level)
    logger.propagate = False
    rank_filter = RankZeroFilter(rank)
    out = _BarAwareHandler(stream)
    out.setFormatter(logging.Formatter("%(message)s"))
    out.addFilter(rank_filter)
    setattr(out, _OURS, True)
    logger.addHandler(out)
    if file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        fh = logging.FileHandler(file, encoding="utf-8", delay=True)  # no file until a line
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        setattr(fh, _OURS, True)
        logger.addHandler(fh)
    return logger


def _default_setup() -> None:
    # A library call before any setup_logging (tests, notebooks) still prints its lines.
    logger = logging.getLogger(ROOT)
    if not any(getattr(h, _OURS, False) for h in logger.handlers):
        rank = os.environ.get("RANK", "0").strip()
        # The launcher's RANK is checked where the stage sets up its processes; here a
        # malformed one just means "not rank 0" is unknown: log as rank 0.
        setup_logging(rank=int(rank) if rank.isdigit() else 0)


_default_setup()
