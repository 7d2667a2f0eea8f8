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
``STOP_RESULT_TTL_SEC`` (with the final's word confidence and its words, for
a session that asked for them, as JSON), then blanked (the stop still answers
``stop_result_expired``) and forgotten after a day; at most
``POLYASR_STOP_STORE_MAX`` rows are held, the least recently used go first.

The store is best effort, like the archive beside it: a write the disk
refuses (full, read-only, gone) is logged and counted in the archive status,
and the row goes to an in-memory database instead, so the stop is still
answered — and a retry on this process still gets the same final — while the
disk is failing. Reads look in memory first: it only ever holds rows newer
than the disk's (a later successful disk write of the same key removes them).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyasr.archive.status import STOPS, ArchiveStatus

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
    confidence TEXT,
    words TEXT,
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
    confidence: str | None = None  # the final's ``confidence`` as JSON, when the session asked for it
    words: str | None = None  # the ``words`` message's fields as JSON, once known

    def scores(self) -> list[dict[str, Any]] | None:
        """The final's ``confidence`` as sent (None: the session did not ask)."""
        return json.loads(self.confidence) if self.confidence is not None else None


Row = tuple[Any, ...]
FAILURES = (sqlite3.Error, OSError)


def _database(path: Path | None) -> sqlite3.Connection:
    """An open store database with its tables (in memory for ``None``)."""
    db = sqlite3.connect(
        str(path) if path is not None else ":memory:", check_same_thread=False, isolation_level=None
    )
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(stops)")}
    for column in ("confidence", "words"):  # a database from before these columns
        if column not in columns:
            db.execute(f"ALTER TABLE stops ADD COLUMN {column} TEXT")
    return db


class StopStore:
    """Stop results and current incarnations in one small SQLite database."""

    def __init__(self, path: Path | None, max_records: int, status: ArchiveStatus | None = None) -> None:
        self.path = path
        self.max_records = max_records
        self.status = status or ArchiveStatus()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Used from the event loop; the lock makes the rare call from a worker thread safe too.
        self._lock = threading.Lock()
        self._memory = _database(None)
        self._disk = _database(path) if path is not None else None

    @classmethod
    def under(cls, log_root: Path | None, max_records: int, status: ArchiveStatus | None = None) -> StopStore:
        """The store for an archive root (``None``: archiving off → in memory).

        A root the process cannot write (a file in the way, no permission)
        must not stop the service: stop results are then kept in memory, as
        with archiving off, and the log says so once.
        """
        if log_root is None:
            return cls(None, max_records, status)
        try:
            return cls(log_root / DB_NAME, max_records, status)
        except FAILURES as exc:
            log.warning("stop results kept in memory: cannot open %s (%s)", log_root / DB_NAME, exc)
            if status is not None:
                status.failed(STOPS, exc)
            return cls(None, max_records, status)

    # -- the two databases ------------------------------------------------------

    def _read(self, query: str, params: tuple[Any, ...]) -> Row | None:
        """The first row, from memory (newer) or else the disk (caller holds the lock)."""
        row = self._memory.execute(query, params).fetchone()
        if row is not None or self._disk is None:
            return row
        try:
            found: Row | None = self._disk.execute(query, params).fetchone()
        except FAILURES as exc:
            self.status.failed(STOPS, exc)
            return None
        return found

    def _write(
        self, apply: Callable[[sqlite3.Connection], None], forget: tuple[str, tuple[Any, ...]]
    ) -> None:
        """``apply`` to the disk; when the disk refuses, to memory. A disk write
        also drops the memory's row of the same key (``forget``), now stale."""
        if self._disk is not None:
            try:
                apply(self._disk)
            except FAILURES as exc:
                self.status.failed(STOPS, exc)
            else:
                self.status.ok(STOPS)
                self._memory.execute(*forget)
                return
        apply(self._memory)

    def _each(self, apply: Callable[[sqlite3.Connection], None]) -> None:
        """Upkeep on both databases; the disk's failure is counted, not raised."""
        apply(self._memory)
        if self._disk is not None:
            try:
                apply(self._disk)
            except FAILURES as exc:
                self.status.failed(STOPS, exc)

    # -- stops and incarnations ------------------------------------------------

    def get(self, session_id: str, stop_id: str, now: float) -> StopRecord | None:
        key = (session_id, stop_id)
        with self._lock:
            row = self._read(
                "SELECT incarnation, text, recognized, at, confidence, words FROM stops"
                " WHERE session_id=? AND stop_id=?",
                key,
            )
            if row is None:
                return None
            self._each(
                lambda db: db.execute("UPDATE stops SET used=? WHERE session_id=? AND stop_id=?", (now, *key))
            )
        return StopRecord(*row)

    def put(self, session_id: str, stop_id: str, record: StopRecord) -> None:
        values = (
            session_id,
            stop_id,
            record.incarnation,
            record.text,
            record.recognized_through,
            record.at,
            record.at,
            record.confidence,
            record.words,
        )

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO stops"
                " (session_id, stop_id, incarnation, text, recognized, at, used, confidence, words)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            self._cap(db, "stops")

        with self._lock:
            forget = ("DELETE FROM stops WHERE session_id=? AND stop_id=?", (session_id, stop_id))
            self._write(apply, forget)

    def incarnation(self, session_id: str) -> str | None:
        """The session's current incarnation, as the last ``start`` left it."""
        with self._lock:
            row = self._read("SELECT incarnation FROM incarnations WHERE session_id=?", (session_id,))
        return row[0] if row else None

    def begin(self, session_id: str, incarnation: str, now: float) -> None:
        """A ``start`` began ``incarnation``: a resume after a restart continues it."""

        def apply(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO incarnations VALUES (?, ?, ?)", (session_id, incarnation, now))
            self._cap(db, "incarnations")

        with self._lock:
            self._write(apply, ("DELETE FROM incarnations WHERE session_id=?", (session_id,)))

    def _cap(self, db: sqlite3.Connection, table: str) -> None:
        """Least recently used rows beyond ``max_records`` go (caller holds the lock)."""
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if count > self.max_records:
            db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY used ASC LIMIT ?)",
                (count - self.max_records,),
            )

    def prune(self, now: float, text_ttl: float) -> None:
        """Blank texts past their TTL; forget records (and incarnations) after a day."""

        def apply(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM stops WHERE at < ?", (now - STOP_TOMBSTONE_SEC,))
            db.execute("DELETE FROM incarnations WHERE used < ?", (now - STOP_TOMBSTONE_SEC,))
            db.execute(
                "UPDATE stops SET text=NULL, confidence=NULL, words=NULL WHERE text IS NOT NULL AND at < ?",
                (now - text_ttl,),
            )

        with self._lock:
            self._each(apply)

    def count(self) -> int:
        with self._lock:
            (count,) = self._memory.execute("SELECT COUNT(*) FROM stops").fetchone()
            if self._disk is not None:
                try:
                    count += self._disk.execute("SELECT COUNT(*) FROM stops").fetchone()[0]
                except FAILURES as exc:
                    self.status.failed(STOPS, exc)
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._memory.close()
            if self._disk is not None:
                self._disk.close()
