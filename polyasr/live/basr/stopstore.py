"""Answered stops, kept across restarts.

A client that retries its ``stop`` (same ``sessionId``, same ``stopId``) must
get the same ``final`` — or ``stopExpired`` — never a second, different
decode, even when the service restarted in between. So every answered stop is
a row in an embedded SQLite database: ``<POLYASR_LOG_DIR>/stops.sqlite3``
(stdlib ``sqlite3``, WAL), or an in-memory database when archiving is off
(``POLYASR_LOG_DIR=``), which then lasts as long as the process.

Rows are keyed by ``(sessionId, stopId)`` and carry the *incarnation* they
answered: a ``start`` begins a new incarnation of a session, and a stop result
of an older incarnation is never replayed for new audio. The store also
remembers each session's current incarnation, so a ``resume`` after a restart
continues the incarnation the client was in. Texts are served for
``STOP_RESULT_TTL_SEC``, then blanked (the stop still answers
``stop_result_expired``) and forgotten after a day; at most
``POLYASR_STOP_STORE_MAX`` rows are held, the least recently used go first.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("polyasr.stops")

STOP_TOMBSTONE_SEC = 86_400.0  # how long an expired stopId is still recognized
DB_NAME = "stops.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stops (
    session_id TEXT NOT NULL,
    stop_id TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    text TEXT,
    recognized INTEGER,
    at REAL NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (session_id, stop_id)
);
CREATE INDEX IF NOT EXISTS stops_used ON stops (used);
CREATE TABLE IF NOT EXISTS incarnations (
    session_id TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incarnations_used ON incarnations (used);
"""


@dataclass(frozen=True)
class StopRecord:
    incarnation: str
    text: str | None  # None once expired (the text is not kept longer than the TTL)
    recognized_through: int | None
    at: float  # wall-clock seconds: the record outlives the process


class StopStore:
    """Stop results and current incarnations in one small SQLite database."""

    def __init__(self, path: Path | None, max_records: int) -> None:
        self.path = path
        self.max_records = max_records
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Used from the event loop; the lock makes the rare call from a worker thread safe too.
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:", check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @classmethod
    def under(cls, log_root: Path | None, max_records: int) -> StopStore:
        """The store for an archive root (``None``: archiving off → in memory).

        A root the process cannot write (a file in the way, no permission)
        must not stop the service: stop results are then kept in memory, as
        with archiving off, and the log says so once.
        """
        if log_root is None:
            return cls(None, max_records)
        try:
            return cls(log_root / DB_NAME, max_records)
        except (OSError, sqlite3.Error) as exc:
            log.warning("stop results kept in memory: cannot open %s (%s)", log_root / DB_NAME, exc)
            return cls(None, max_records)

    def get(self, session_id: str, stop_id: str, now: float) -> StopRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT incarnation, text, recognized, at FROM stops WHERE session_id=? AND stop_id=?",
                (session_id, stop_id),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE stops SET used=? WHERE session_id=? AND stop_id=?", (now, session_id, stop_id)
            )
        return StopRecord(*row)

    def put(self, session_id: str, stop_id: str, record: StopRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO stops VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    stop_id,
                    record.incarnation,
                    record.text,
                    record.recognized_through,
                    record.at,
                    record.at,
                ),
            )
            self._cap("stops")

    def incarnation(self, session_id: str) -> str | None:
        """The session's current incarnation, as the last ``start`` left it."""
        with self._lock:
            row = self._db.execute(
                "SELECT incarnation FROM incarnations WHERE session_id=?", (session_id,)
            ).fetchone()
        return row[0] if row else None

    def begin(self, session_id: str, incarnation: str, now: float) -> None:
        """A ``start`` began ``incarnation``: a resume after a restart continues it."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO incarnations VALUES (?, ?, ?)", (session_id, incarnation, now)
            )
            self._cap("incarnations")

    def _cap(self, table: str) -> None:
        """Least recently used rows beyond ``max_records`` go (caller holds the lock)."""
        (count,) = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if count > self.max_records:
            self._db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY used ASC LIMIT ?)",
                (count - self.max_records,),
            )

    def prune(self, now: float, text_ttl: float) -> None:
        """Blank texts past their TTL; forget records (and incarnations) after a day."""
        with self._lock:
            self._db.execute("DELETE FROM stops WHERE at < ?", (now - STOP_TOMBSTONE_SEC,))
            self._db.execute("DELETE FROM incarnations WHERE used < ?", (now - STOP_TOMBSTONE_SEC,))
            self._db.execute(
                "UPDATE stops SET text=NULL WHERE text IS NOT NULL AND at < ?", (now - text_ttl,)
            )

    def count(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM stops").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
