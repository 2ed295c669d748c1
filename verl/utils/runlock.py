"""An exclusive lock on a run directory, so two processes never train (or evaluate) into the same folder.

``fcntl.flock`` on ``<dir>/.lock``: the kernel drops the lock when its process dies, even by SIGKILL, so a killed
run never leaves a stale lock behind and its rerun starts at once. The file records the holder's pid and host for
the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from verl.utils.cli import UserError

LOCK_NAME = ".lock"


class RunDirInUseError(UserError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """``with RunDirLock(dir):`` or ``lock = RunDirLock(dir).acquire()`` ... ``lock.release()``."""

    def __init__(self, run_dir: str | os.PathLike, what: str = "run"):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder() or {}
            raise RunDirInUseError(
                f"{self.dir} is in use by another {self.what} (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}): wait for it to finish, stop it, or "
                "choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, json.JSONDecodeError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
