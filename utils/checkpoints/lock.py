"""One run per output: a lock file beside a checkpoint or in a log folder.

    with OutputLock(path + ".lock", what=path, log=print):
        ...  # train, write checkpoints and metrics

The lock file is created with O_CREAT|O_EXCL and holds {"pid", "host", "since", "argv"}.
A second run on the same output refuses in one line naming the holder's PID and host. A
lock left by a run that died without releasing it (kill -9, power loss) is detected when
its PID is not alive on this host, and taken over with a note; a lock from another host
cannot be checked and is refused (remove the file when that run is gone). The lock is
released when the `with` block ends - normally, on an error, on Ctrl-C or SIGTERM (both
end the block) - and, as a last resort, at interpreter exit. Distributed runs lock on
rank 0 only (`enabled=env.is_main`).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time

from utils.errors import UserError
from utils.logs import get_logger

_log = get_logger(__name__)

_HELD: set[str] = set()  # lock files this process holds (abs paths)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


class OutputLock:
    def __init__(self, path: str, what: str | None = None, enabled: bool = True, log=None):
        self.path = os.path.abspath(path)
        self.what = what or path
        self.enabled = enabled
        self.log = log or (lambda m: _log.warning(m, extra={"all_ranks": True}))
        self.held = False
        self.made: list[str] = []  # folders made for the lock, removed again when empty

    def _create(self) -> bool:
        folder, missing = os.path.dirname(self.path), []
        while not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder of {self.path}: {e.strerror or e}") from None
        self.made = self.made or missing
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise UserError(f"cannot create the lock file {self.path}: "
                            f"{e.strerror or e}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(),
                           since=time.strftime("%Y-%m-%d %H:%M:%S"),
                           argv=" ".join(sys.argv)[:500]), f)
        return True

    def acquire(self) -> "OutputLock":
        if not self.enabled or self.held:
            return self
        for _ in range(3):  # a stale lock may be taken over by a racing run: look again
            if self._create():
                self.held = True
                _HELD.add(self.path)
                return self
            info = _read(self.path)
            if info is None:
                if not os.path.exists(self.path):
                    continue  # released meanwhile
                raise UserError(f"{self.what} is locked by {self.path}, which is unreadable; "
                                f"remove it if no run is using {self.what}")
            pid, host = info.get("pid"), info.get("host")
            here = host == socket.gethostname()
            mine = here and pid == os.getpid() and self.path not in _HELD
            if here and isinstance(pid, int) and (mine or not _alive(pid)):
                self.log(f"note: taking over the lock {self.path} left by process {pid} "
                         f"(no longer running){' started ' + info['since'] if info.get('since') else ''}")
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            where = f"PID {pid} on host {host}" + (f", since {info['since']}"
                                                   if info.get("since") else "")
            raise UserError(f"{self.what} is in use by another run ({where}); wait for it to "
                            f"finish, or remove {self.path} if that run is gone")
        raise UserError(f"could not take the lock {self.path}; another run keeps taking it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.discard(self.path)
        info = _read(self.path)
        if info is not None and info.get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        for folder in self.made:  # deepest first; a refused or failed run leaves no folder
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: the run wrote there
        self.made = []

    def __enter__(self) -> "OutputLock":
        self.acquire()
        if self.held:
            atexit.register(self.release)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        try:
            atexit.unregister(self.release)
        except Exception:  # noqa: BLE001
            pass
