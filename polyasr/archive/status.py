"""Whether the archive is keeping what clients send: writes that failed or were skipped.

Archiving is best effort by design — a full disk must not cost a user the
final — so a failed write is logged and counted instead of raised. Counted
here, per kind of write, so that ``/health`` can say the archive is failing
and ``/metrics`` how often; a later write of the same kind that succeeds
clears the alarm for that kind.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("polyasr.archive")

# Kinds of archive write, as counted.
SESSIONS = "sessions"  # a dictation connection's events and audio
UPLOADS = "uploads"  # a batch upload's audio and sidecar
STOPS = "stops"  # the stop store (stops.sqlite3)
KINDS = (SESSIONS, UPLOADS, STOPS)

LOG_EVERY_SEC = 60.0  # a disk that stays full logs once a minute per kind, not per write


@dataclass
class _Kind:
    failures: int = 0
    skipped: int = 0  # refused by the byte budget (LOG_MAX_GB, LOG_MIN_FREE_GB)
    failing: bool = False
    last_error: str = ""
    logged_at: float = float("-inf")


class ArchiveStatus:
    """Failed and skipped archive writes by kind; thread-safe, never raises."""

    def __init__(self) -> None:
        self._kinds = {kind: _Kind() for kind in KINDS}
        self._lock = threading.Lock()

    def failed(self, kind: str, error: BaseException | str, skipped: bool = False) -> None:
        """A write of ``kind`` did not reach the disk; logged at most once a minute per kind."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        now = time.monotonic()
        with self._lock:
            state = self._kinds[kind]
            if skipped:
                state.skipped += 1
            else:
                state.failures += 1
            state.failing, state.last_error = True, message
            due = now - state.logged_at >= LOG_EVERY_SEC
            if due:
                state.logged_at = now
            count = state.failures + state.skipped
        if due:
            log.warning("archive %s not written (%d so far): %s", kind, count, message)

    def ok(self, kind: str) -> None:
        """A write of ``kind`` succeeded: the alarm for it is over."""
        state = self._kinds[kind]
        if state.failing:
            with self._lock:
                state.failing = False

    @property
    def failing(self) -> list[str]:
        """The kinds whose last write did not reach the disk."""
        with self._lock:
            return [kind for kind, state in self._kinds.items() if state.failing]

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{kind: (failed, skipped)}`` since start-up."""
        with self._lock:
            return {kind: (state.failures, state.skipped) for kind, state in self._kinds.items()}

    def as_dict(self) -> dict[str, Any]:
        """The ``archive`` block of ``/health``."""
        with self._lock:
            return {
                kind: {
                    "failing": state.failing,
                    "failed_writes": state.failures,
                    "skipped_writes": state.skipped,
                    **({"last_error": state.last_error} if state.last_error else {}),
                }
                for kind, state in self._kinds.items()
            }
