"""The archive's byte budget, enforced when a write is about to happen.

The hourly retention sweep alone let one client add 210 MB in five seconds.
So every archive write asks first: it must keep the archive under
``LOG_MAX_GB`` and leave ``LOG_MIN_FREE_GB`` free on the disk. When it would
not, the oldest archived items are deleted to make room (as journald keeps
``SystemMaxUse`` and ``SystemKeepFree``), down to 90 % of the cap (or up to
the floor plus a tenth) so that a busy archive does not sweep on every write;
when even that cannot make room (everything left belongs to open connections,
or the disk is full of other things), the write is refused and the caller
counts it as skipped, and for the next few seconds writes that do not fit are
refused without another sweep.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from polyasr.archive.retention import archive_bytes, prune

log = logging.getLogger("polyasr.archive")

LOW_WATER = 0.9  # a sweep forced by the cap leaves the archive at this share of it
BUDGET_SPENT = "the archive's byte budget is spent (POLYASR_LOG_MAX_GB, POLYASR_LOG_MIN_FREE_GB)"
STUCK_SEC = 5.0  # after a sweep that could not make room, no other sweep for this long


class DiskBudget:
    """``LOG_MAX_GB`` and ``LOG_MIN_FREE_GB`` for the archive under ``root``; thread-safe.

    ``used`` is an estimate kept between sweeps: set from a scan at each
    sweep, raised by every write allowed since (a PCM that becomes a smaller
    FLAC at close is over-counted until the next sweep, never under-counted).
    """

    def __init__(
        self,
        root: Path,
        max_bytes: float,
        min_free_bytes: float,
        is_open: Callable[[Path], bool] = lambda _: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.is_open = is_open
        self.clock = clock
        self.used: int | None = None  # measured at the first write (or sweep)
        self._stuck_until = float("-inf")
        self._lock = threading.Lock()

    def measured(self, total: int) -> None:
        """A sweep just counted what the archive holds."""
        with self._lock:
            self.used = total

    def allow(self, size: int) -> bool:
        """Whether ``size`` more bytes may be written now; if so they are counted (blocking:
        may delete old items first)."""
        with self._lock:
            if self.used is None:
                self.used = archive_bytes(self.root)
            if not self._fits(size) and self.clock() >= self._stuck_until:
                self._make_room(size)
                if not self._fits(size):
                    self._stuck_until = self.clock() + STUCK_SEC
            if not self._fits(size):
                return False
            self.used += size
            return True

    def _free(self) -> int:
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def _fits(self, size: int) -> bool:
        assert self.used is not None
        if self.max_bytes > 0 and self.used + size > self.max_bytes:
            return False
        return self.min_free_bytes <= 0 or self._free() - size >= self.min_free_bytes

    def _make_room(self, size: int) -> None:
        """Delete the oldest items until the write fits, with a margin."""
        assert self.used is not None
        over_cap = self.used + size - LOW_WATER * self.max_bytes if self.max_bytes > 0 else 0
        under_floor = self.min_free_bytes / LOW_WATER + size - self._free() if self.min_free_bytes > 0 else 0
        needed = max(over_cap, under_floor, 0)
        try:
            deleted = prune(self.root, max_age_days=0, max_bytes=0, is_open=self.is_open, free_bytes=needed)
            self.used = archive_bytes(self.root)
        except OSError:
            log.warning("could not make room in the archive", exc_info=True)
            return
        if deleted:
            log.info("archive budget: deleted %d oldest item(s) to make room", len(deleted))
