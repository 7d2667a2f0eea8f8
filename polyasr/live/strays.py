"""Messages that are not progress: counted per connection, capped, and archived sparingly.

A duplicate frame, or a Realtime event that is an error or only restates
the session, moves no dictation forward. Such messages used to reset the
idle timer (two sockets held both session slots with nothing but
duplicates) and each wrote an archive line (3000 duplicates, 246 kB of
events). Now only new audio is activity (the connections see to that), a
connection may send at most ``limit`` of one kind, and their archive lines
are rate-limited: the first few one by one, then at most one a second, which
says how many were left out since the last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOG_BURST = 10  # lines of a kind archived one by one before the rate limit applies
LOG_EVERY_SEC = 1.0  # then at most one line this often


class Strays:
    """One kind of non-progress message on one connection."""

    def __init__(self, limit: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.count = 0
        self._logged = 0
        self._left_out = 0
        self._logged_at = float("-inf")

    @property
    def exceeded(self) -> bool:
        """More than ``limit`` have come: the connection is to be closed."""
        return self.limit is not None and self.count > self.limit

    def note(self) -> dict[str, int] | None:
        """Count one; the extra fields of its archive line, or ``None`` if the line is left out."""
        self.count += 1
        now = self.clock()
        if self._logged >= LOG_BURST and now - self._logged_at < LOG_EVERY_SEC:
            self._left_out += 1
            return None
        fields = {"left_out": self._left_out} if self._left_out else {}
        self._logged += 1
        self._logged_at, self._left_out = now, 0
        return fields
