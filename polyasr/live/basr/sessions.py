"""The dictation sessions of the process.

A session outlives connections: the registry keeps, per ``sessionId``, the
frame journal, the recognition state and which connection drives it, until
``RESUME_TTL_SEC`` after its last update. Its rules, in one place:

* A ``start`` begins a new *incarnation* of the session; only a ``resume``
  continues one. Stop results belong to their incarnation, so a reused
  ``sessionId`` + ``stopId`` after a new ``start`` decodes the new audio.
* One connection drives a session at a time: claiming it supersedes the
  previous driver, which stops touching the session at once.
* An incarnation is finalized once; any later stop of it replays that result.
* At most ``POLYASR_MAX_SESSIONS`` sessions are driven at once; beyond that a
  ``start``/``resume`` is refused with ``server_busy``. A connection that
  drives no resumable session (an OpenAI Realtime socket) is *admitted* as a
  guest: it counts toward that limit, is refused while draining and is told
  to shut down like the drivers.
* Unfinished sessions held for a resume without a connection are capped too:
  while ``POLYASR_MAX_HELD_SESSIONS`` of them are held, or they keep
  ``POLYASR_MAX_HELD_MB`` of audio, a ``start``/``resume`` that would add a
  session is refused with ``server_busy`` (one that takes a held session over
  is not: it makes room). A session that loses its connection keeps only what
  a resume needs: the frames that arrived ahead of a gap were never
  acknowledged, so they are dropped (at the latest by the resume) and the
  client resends them.
* Once the process drains for shutdown (polyasr.api.drain), every ``start``/``resume``
  is refused with ``server_shutting_down``, and after the grace the drivers
  still live are told to shut down.

Answered stops are kept in the :class:`StopStore` (SQLite) so they survive a
restart. The connection reaches all of this through the methods below, never
through the dictionaries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from polyasr.align.dictation import DictationWords
from polyasr.archive.status import ArchiveStatus
from polyasr.core.config import Settings
from polyasr.dictation.session import DictationSession
from polyasr.live.basr.journal import FrameJournal
from polyasr.live.basr.stopstore import StopRecord, StopStore
from polyasr.live.basr.wire import Opening
from polyasr.live.refusals import SERVER_BUSY, SESSIONS_HELD, SHUTTING_DOWN, protocol_error

PRUNE_INTERVAL_SEC = 5.0


class Driver(Protocol):
    """A connection that may drive a session."""

    def supersede(self) -> None:
        """A newer connection took the session over."""

    def shut_down(self) -> None:
        """The process is going down: tell the client to resume after the restart."""


@dataclass
class SessionRecord:
    """What the process holds for one ``sessionId``."""

    session_id: str
    incarnation: str
    journal: FrameJournal
    session: DictationSession
    updated_at: float
    owner: Driver | None = None
    result: StopRecord | None = None  # this incarnation's final, once answered

    @property
    def words(self) -> DictationWords | None:
        """The session's words, when its start asked for them."""
        listener = self.session.listener
        return listener if isinstance(listener, DictationWords) else None


@dataclass
class SessionRegistry:
    """Session records and answered stops, behind claim / release / record / replay."""

    resume_ttl: float
    stop_ttl: float
    max_sessions: int = 64
    max_held_sessions: int = 128
    max_held_bytes: int = 512 * 1_048_576
    reorder_window: int = 256
    reorder_max_bytes: int = 2_097_152
    store: StopStore = field(default_factory=lambda: StopStore(None, 10_000))
    clock: Callable[[], float] = time.time
    draining: bool = False
    _records: dict[str, SessionRecord] = field(default_factory=dict)
    _guests: set[Driver] = field(default_factory=set)

    @classmethod
    def from_settings(
        cls, settings: Settings, log_root: Path | None, status: ArchiveStatus | None = None
    ) -> SessionRegistry:
        """The registry a server runs with: its limits and a stop store under ``log_root``
        (whose failed writes count in the archive's ``status``)."""
        return cls(
            resume_ttl=settings.resume_ttl_sec,
            stop_ttl=settings.stop_result_ttl_sec,
            max_sessions=settings.max_sessions,
            max_held_sessions=settings.max_held_sessions,
            max_held_bytes=int(settings.max_held_mb * 1_048_576),
            reorder_window=settings.reorder_window,
            reorder_max_bytes=settings.reorder_max_bytes,
            store=StopStore.under(log_root, settings.stop_store_max, status),
        )

    # -- sessions ------------------------------------------------------------

    def held(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        if record is not None and record.owner is None and self._expired(record):
            self._drop(session_id)
            return None
        return record

    def driven(self) -> int:
        """Sessions a connection is driving now (guests included)."""
        return sum(record.owner is not None for record in self._records.values()) + len(self._guests)

    def detached(self) -> tuple[int, int]:
        """Unfinished sessions held for a resume without a connection, and the
        bytes of audio they keep. A finished one (its stop answered) keeps no
        audio, only what replays its final, and is not counted."""
        waiting = [
            r
            for r in self._records.values()
            if r.owner is None and not r.session.finished and not self._expired(r)
        ]
        return len(waiting), sum(r.session.held_bytes() + r.journal.ahead_bytes for r in waiting)

    def _check_room(self, new: bool) -> None:
        """Refuse a claim the limits do not allow (``new``: it would add a session)."""
        if self.driven() >= self.max_sessions:
            raise protocol_error(SERVER_BUSY, sessions=self.driven())
        if not new:
            return
        count, held = self.detached()
        if count >= self.max_held_sessions or held >= self.max_held_bytes:
            raise protocol_error(SESSIONS_HELD, held_sessions=count, held_bytes=held)

    def admit(self, guest: Driver) -> None:
        """Count a connection without a resumable session, or refuse it (busy, draining)."""
        if self.draining:
            raise protocol_error(SHUTTING_DOWN)
        if self.driven() >= self.max_sessions:
            raise protocol_error(SERVER_BUSY, sessions=self.driven())
        self._guests.add(guest)

    def dismiss(self, guest: Driver) -> None:
        self._guests.discard(guest)

    def claim(
        self, opening: Opening, owner: Driver, new_session: Callable[[], DictationSession]
    ) -> SessionRecord:
        """Attach ``owner`` to the session ``opening`` names (a start replaces it)."""
        if self.draining:
            raise protocol_error(SHUTTING_DOWN)
        held = self.held(opening.session_id)
        if held is None or held.owner is None:
            self._check_room(new=held is None)
        now = self.clock()
        if opening.resume and held is not None:
            record = held
            record.journal.forget_ahead()  # the client resends everything after ackSeq
        else:
            if held is not None:
                self._drop(opening.session_id)
            incarnation = self.store.incarnation(opening.session_id) if opening.resume else None
            if incarnation is None:
                incarnation = secrets.token_hex(8)
                self.store.begin(opening.session_id, incarnation, now)
            journal = FrameJournal(self.reorder_window, self.reorder_max_bytes)
            record = SessionRecord(opening.session_id, incarnation, journal, new_session(), now)
            self._records[opening.session_id] = record
        previous, record.owner = record.owner, owner
        if previous is not None and previous is not owner:
            previous.supersede()
        record.updated_at = now
        return record

    def drives(self, record: SessionRecord, owner: Driver) -> bool:
        return record.owner is owner and self._records.get(record.session_id) is record

    def touch(self, record: SessionRecord) -> None:
        """The journal changed (a frame, a partial): its resume window starts again."""
        record.updated_at = self.clock()

    def release(self, record: SessionRecord, owner: Driver) -> None:
        """``owner`` is done with the session; it stays resumable until it expires,
        keeping only what a resume needs."""
        if record.owner is owner:
            record.owner = None
            record.journal.forget_ahead()
            record.session.detach()
            record.updated_at = self.clock()

    def stop_admitting(self) -> None:
        """Shutdown began: no new driver from now on."""
        self.draining = True

    def shut_down_all(self) -> int:
        """Tell every driver still live that the process goes down; how many there were."""
        owners = [record.owner for record in self._records.values() if record.owner is not None]
        owners += list(self._guests)
        for owner in owners:
            owner.shut_down()
        return len(owners)

    def _expired(self, record: SessionRecord) -> bool:
        return self.clock() - record.updated_at > self.resume_ttl

    def _drop(self, session_id: str) -> None:
        record = self._records.pop(session_id, None)
        if record is None:
            return
        record.session.cancel_work()
        if record.words is not None:
            record.words.cancel()
        if record.owner is not None:
            record.owner.supersede()

    # -- stops ----------------------------------------------------------------

    def replay_stop(self, record: SessionRecord, stop_id: str) -> StopRecord | None:
        """The answer already given to this stop of this incarnation, if any.

        A stop of an older incarnation is not an answer: the new audio is
        decoded. A finished incarnation answers any further stop with its one
        result (and remembers the new ``stopId`` for it).
        """
        found = self.store.get(record.session_id, stop_id, self.clock())
        if found is not None and found.incarnation == record.incarnation:
            return found
        if record.result is not None:
            self.store.put(record.session_id, stop_id, record.result)
            return record.result
        return None

    def record_stop(
        self,
        record: SessionRecord,
        stop_id: str,
        text: str,
        recognized: int | None,
        confidence: list[dict[str, Any]] | None = None,
    ) -> StopRecord:
        """This incarnation's answer, as stored (``confidence``, the final's
        word list, as JSON)."""
        stored = json.dumps(confidence, ensure_ascii=False) if confidence is not None else None
        result = StopRecord(record.incarnation, text, recognized, self.clock(), stored)
        record.result = result
        self.store.put(record.session_id, stop_id, result)
        return result

    def record_words(self, record: SessionRecord, stop_id: str, words: str) -> None:
        """The final's words (the ``words`` message's fields, JSON) join its stop result."""
        if record.result is None:
            return
        record.result = dataclasses.replace(record.result, words=words)
        self.store.put(record.session_id, stop_id, record.result)

    def is_fresh(self, stop: StopRecord) -> bool:
        return stop.text is not None and self.clock() - stop.at <= self.stop_ttl

    # -- expiry ---------------------------------------------------------------

    def prune(self) -> None:
        """Expire journals and stop texts on a timer, not only on the next start."""
        for session_id, record in list(self._records.items()):
            if record.owner is None and self._expired(record):
                self._drop(session_id)
        self.store.prune(self.clock(), self.stop_ttl)

    async def prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SEC)
            self.prune()
