"""Files: atomic writes (temp file beside the output, then rename), strict JSON, output checks.

Writes go to a temp file `.<name>.tmp-*` beside the output, then are renamed over it;
a failed write (disk full, quota, read-only) removes the temp file, keeps the old output
and is a one-line UserError; `clean_stale_temps` removes the temp files a killed save
left. `check_output_path` / `check_output_dir` refuse, before any work, an output that
cannot be written; `trim_metrics` keeps a resumed run from logging rows twice; `fault`
is the BNNAS_FAULT test hook. Every writer in the project goes through `write_atomic`.
"""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import tempfile
from collections.abc import Mapping
from typing import Any

from utils.errors import UserError

TMP_MARK = ".tmp-"  # temp files are ".<name>.tmp-<random><suffix>" beside <name>


class FaultInjected(RuntimeError):
    """Raised by `fault()` at a test's chosen point (BNNAS_FAULT), as a crash would be."""


_FAULT_COUNTS: dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook: BNNAS_FAULT=<point>[@N] makes the N-th (default first) arrival here fail.

    Points: "save-enospc" (inside save_atomic / write_json_atomic, after the temp file is
    written: a disk-full OSError), "save-kill" (same place in save_atomic only: SIGKILL,
    leaving the temp file),
    "probe-erofs" (check_output_path's write test: a read-only file system); any other
    point (e.g. "retrain-after-best", "retrain-validate") raises FaultInjected.
    Unset (always, outside tests), this is one environment lookup.
    """
    spec = os.environ.get("BNNAS_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _FAULT_COUNTS[point] = _FAULT_COUNTS.get(point, 0) + 1
    if _FAULT_COUNTS[point] != (int(nth) if nth else 1):
        return
    for action, code in (("-enospc", errno.ENOSPC), ("-erofs", errno.EROFS)):
        if point.endswith(action):
            raise OSError(code, os.strerror(code))
    if point.endswith("-kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(f"fault injected at {point}")


def _tmp_beside(path: str, suffix: str) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}{TMP_MARK}",
                               suffix=suffix)
    # mkstemp makes the file private (0600); the renamed result should get the permissions
    # a plain open() would give it, so teammates on a shared cluster can read checkpoints.
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def _write_error(path: str, e: OSError) -> UserError:
    reason = e.strerror or str(e) or type(e).__name__
    code = errno.errorcode.get(e.errno or -1)
    return UserError(f"cannot write {path}: {reason}" + (f" ({code})" if code else "")
                     + ("; the previous file is unchanged" if os.path.exists(path) else ""))


def write_atomic(path: str, suffix: str, write, faults: bool = True) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename over `path`.

    A failure removes the temp file and leaves `path` as it was; a full or read-only disk
    (any OSError) is a one-line UserError naming the file and the reason. `faults=False`:
    not a BNNAS_FAULT save point (write_text_atomic: a run's settings file).
    """
    try:
        fd, tmp = _tmp_beside(path, suffix)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if faults:
            fault("save-enospc")
        if suffix == ".pth":  # counts checkpoint saves only, not the JSON/YAML beside them
            fault("save-kill")
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _write_error(path, e) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def json_safe(obj: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """(`obj` as plain JSON values, {path: "nan" | "inf" | "-inf"} of what was replaced).

    JSON has no nan or infinity (Python's json writes the non-standard NaN/Infinity,
    which other readers reject): a non-finite float becomes null, and its path (e.g.
    "best.score", "candidates[3].score") is returned so that the writer can record why.
    numpy scalars and arrays and torch tensors become plain Python values.
    """
    bad: dict[str, str] = {}

    def conv(v: Any, at: str) -> Any:
        if type(v).__module__.startswith("torch") and hasattr(v, "detach"):  # no torch import
            v = v.detach().cpu().tolist()
        elif type(v).__module__ == "numpy":
            v = v.tolist() if hasattr(v, "tolist") else v
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return v
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            bad[at or "(value)"] = "nan" if v != v else ("inf" if v > 0 else "-inf")
            return None
        if isinstance(v, Mapping):
            return {k: conv(x, f"{at}.{k}" if at else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x, f"{at}[{i}]") for i, x in enumerate(v)]
        return v  # json.dumps reports anything else

    return conv(obj, where), bad


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """json.dumps that never writes NaN/Infinity: non-finite floats become null, and a
    dict gets a "nonfinite" entry naming them ({path: "nan"}) so the reason is kept."""
    safe, bad = json_safe(obj)
    if bad and isinstance(safe, dict):
        safe["nonfinite"] = bad
    return json.dumps(safe, indent=indent, allow_nan=False)


def write_json_atomic(obj: Any, path: str, indent: int | None = 1) -> None:
    """Write JSON atomically; non-finite floats become null (see `dumps_json`)."""
    text = dumps_json(obj, indent=indent) + "\n"

    def write(f):
        f.write(text.encode())
    write_atomic(path, ".json", write)


def write_text_atomic(text: str, path: str, suffix: str = ".txt") -> None:
    """Write UTF-8 text atomically (temp file beside `path`, fsync, rename); e.g. a run's
    settings file. Not a BNNAS_FAULT save point, so the fault tests' counts of checkpoint
    and JSON saves stay as they were."""
    data = text.encode()

    def write(f):
        f.write(data)
    write_atomic(path, suffix, write, faults=False)


def clean_stale_temps(*paths: str, log=None) -> list[str]:
    """Remove temp files that a killed save left beside each of `paths` (the caller holds
    the lock of those outputs, so no live writer owns them); returns what was removed."""
    removed = []
    for path in paths:
        directory = os.path.dirname(os.path.abspath(path)) or "."
        prefix = f".{os.path.basename(path)}{TMP_MARK}"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix):
                full = os.path.join(directory, name)
                try:
                    os.unlink(full)
                    removed.append(full)
                except OSError:
                    pass
    if removed and log is not None:
        log(f"note: removed {len(removed)} temp file(s) left by an interrupted save "
            f"({os.path.basename(removed[0])}{', ...' if len(removed) > 1 else ''})")
    return removed


# ---- output locations ---------------------------------------------------------------

def _probe_dir(directory: str, flag: str, target: str, touch: bool = True) -> None:
    """Create and remove a temp file in `directory`: refuses unwritable / read-only ones.
    `touch=False` asks access(2) instead (no trace, not even the folder's mtime)."""
    if not touch:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {target}: cannot write in {directory}")
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bnnas-probe-")
        os.close(fd)
        os.unlink(tmp)
        fault("probe-erofs")
    except OSError as e:
        code = errno.errorcode.get(e.errno or -1)
        raise UserError(f"{flag} {target}: cannot write in {directory}: "
                        f"{e.strerror or e}" + (f" ({code})" if code else "")) from None


def _nearest_existing(path: str, flag: str, target: str) -> str:
    """The deepest existing folder on the way to `path`; refuses a file on the way."""
    cur = os.path.abspath(path)
    while not os.path.exists(cur):
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    if not os.path.isdir(cur):
        raise UserError(f"{flag} {target}: {cur} is a file, not a folder")
    return cur


def check_output_path(path: str | None, flag: str) -> str:
    """Refuse, before any work, an output FILE path that cannot be written: empty, a
    folder, under a file, in an unwritable or read-only folder. Returns the path."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty (an unset variable?): give a file path")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file path")
    if path.endswith(os.sep) or path.endswith("/"):
        raise UserError(f"{flag} {path} names a folder; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    _probe_dir(_nearest_existing(parent, flag, path), flag, path)
    return path


def check_output_dir(path: str | None, flag: str, built_beside: bool = False) -> str:
    """Refuse, before any work, an output FOLDER that cannot be written: empty, a file,
    under a file, in an unwritable or read-only place. Returns the path.

    `built_beside`: the folder is built next to itself and renamed into place: the
    write test goes to its parent and leaves no trace there (not even an mtime)."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty (an unset variable?): give a folder")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder")
    where = os.path.dirname(os.path.abspath(path)) if built_beside else path
    _probe_dir(_nearest_existing(where, flag, path), flag, path, touch=not built_beside)
    return path


def trim_metrics(path: str, last_step: int) -> int:
    """Drop the rows of a metrics JSONL file logged after `last_step` (by a run that
    stopped before its next checkpoint), and any torn line, so a resumed run does not
    log them twice. Rewritten atomically, only when something goes. Returns rows dropped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
            if int(row["step"]) > last_step:
                continue
        except (ValueError, KeyError, TypeError):
            continue
        keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        def write(f):
            f.write("".join(line + "\n" for line in keep).encode())
        write_atomic(path, ".jsonl", write)
    return dropped
