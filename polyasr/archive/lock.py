"""One server per log folder: an exclusive lock taken at start-up, before any model loads.

Two processes on one ``LOG_DIR`` each think the folder is theirs: the second
one's crash recovery "completed" the first one's live session (cutting it
short and writing a second close line), and both wrote the stop store. So
the server holds ``<LOG_DIR>/server.lock`` (``flock``, released by the
kernel however the process ends, so a killed server never leaves it
stale) with its pid inside, and a second server refuses to start, naming
the folder and the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("polyasr.archive")

LOCK_NAME = "server.lock"


class FolderBusy(RuntimeError):
    """Another process holds the log folder's lock."""


class FolderLock:
    """The exclusive lock of one log folder, held until the process exits (or :meth:`release`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; raise :class:`FolderBusy` if another process has it.

        ``False`` when the folder cannot hold a lock file at all (read-only,
        no permission): then nothing can be archived there either, and the
        server starts as it did before, saying so once.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("cannot lock the log folder %s (%s); another server could share it", self.folder, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusy(
                f"the log folder {self.folder} (POLYASR_LOG_DIR) is in use by another polyasr server "
                f"(pid {holder}); stop that server or give this one its own POLYASR_LOG_DIR"
            ) from None
        with contextlib.suppress(OSError):  # a full disk: the lock holds, the pid is not written
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
