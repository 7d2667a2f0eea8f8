"""The dictation protocol on one WebSocket connection (contract §2). No
FastAPI in here: the route hands over a transport with ``receive``/``send``/``close``.

A connection opens with ``start`` or ``resume`` (within ``START_TIMEOUT_SEC``),
acknowledges every frame after archiving it and before reporting anything
derived from it, and ends after exactly one answered ``stop`` (``final`` +
``done``, or ``stopExpired``), a refusal (its own code; 1008, 1009 for
oversize, 1013 when busy or shutting down), a model failure (1011), or the
end of a shutdown drain (``server_shutting_down``, 1012: resume after the restart). The session it drives —
journal, recognition state, stop results — belongs to the registry
(:mod:`polyasr_sessions`); a newer connection for the same session supersedes
this one, which then steps aside at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyasr_archive import ConnectionArchive
from polyasr_audio import pcm16_to_float
from polyasr_constants import BYTES_PER_SECOND
from polyasr_gate import SpeakerGate, VadStream
from polyasr_languages import UnsupportedLanguage, normalize_language
from polyasr_manager import ModelBusy, ModelUnavailable
from polyasr_protocol import (
    ALREADY_STARTED,
    AUDIO_BEFORE_START,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_RESTARTING,
    SESSION_IDLE,
    SESSION_TOO_LONG,
    SHUTTING_DOWN,
    START_TIMEOUT,
    STOP_BEFORE_START,
    UNSUPPORTED_MESSAGE,
    Opening,
    ProtocolError,
    Stop,
    WsLimits,
    ack,
    done,
    error,
    final,
    opened,
    parse_frame,
    parse_json,
    parse_opening,
    parse_stop,
    partial,
    protocol_error,
    stop_expired,
)
from polyasr_sessions import SessionRecord, SessionRegistry
from polyasr_speech import passes_energy_gate
from polyasr_stream import DictationSession, FinalResult, SessionDecoder, StreamSettings

__all__ = ["Connection", "SessionRegistry", "StreamServices", "Transport"]

log = logging.getLogger("polyasr.ws")

COVERAGE_WAIT_SEC = 2.0
RECEIVE_POLL_SEC = 0.1
POST_DONE_PAUSE_SEC = 0.05
RECEIVE_QUEUE = 16  # messages read ahead; beyond that TCP back-pressure slows the sender


class Transport(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the client is gone."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int) -> None: ...


class Disconnected(Exception):
    """The client went away without a stop; the session stays resumable."""


class Superseded(Exception):
    """A newer connection took this session over; this one steps aside."""


class ShuttingDown(ProtocolError):
    """The shutdown drain's grace is over: ``server_shutting_down``, close 1012,
    and the client resumes after the restart (a start is refused with 1013 instead)."""

    def __init__(self) -> None:
        super().__init__(*SHUTTING_DOWN)
        self.close_code = CLOSE_RESTARTING


class ReaderFailed(Exception):
    """Reading from the socket failed: the connection cannot go on."""


class Manager(Protocol):
    def hold(self, name: str) -> Any: ...

    def touch(self, name: str) -> None: ...


def _no_session_end(signal_sec: float, final_text: str, partials: int) -> None:
    return None


@dataclass
class StreamServices:
    """What a connection needs from the process (one instance per app)."""

    registry: SessionRegistry
    decoder: SessionDecoder
    manager: Manager
    settings: StreamSettings
    new_vad: Callable[[], VadStream]
    new_speaker: Callable[[], SpeakerGate]
    new_log: Callable[[], ConnectionArchive]
    limits: WsLimits = field(default_factory=WsLimits)
    # Once per decoded stop (not replays): (signal seconds, final text, partials sent).
    on_session_end: Callable[[float, str, int], None] = _no_session_end


TIMEOUT = object()


def _log_final(
    event: Callable[..., None],
    stop: Stop,
    result: FinalResult,
    recognized: int | None,
    incomplete: bool,
    control: int,
) -> None:
    """The archive's record of a decoded final."""
    native = {"native_stream": True} if result.source == "native_stream" else {}
    event("final", text=result.text, **native)
    event(
        "final_sent",
        stop_id=stop.stop_id,
        source=result.source + ("_incomplete_audio" if incomplete else ""),
        chars=len(result.text),
        recognized_through_seq=recognized,
        control_protocol=control,
    )


class Inbox:
    """The client's messages, read ahead by one task into a bounded queue.

    A full queue stops the reading, so a fast sender is slowed by TCP
    back-pressure instead of buffered without end. A wait for the next message
    also ends when the connection is superseded or the reader died (a dead
    reader must end its connection, or the connection would hold its model
    lease forever).
    """

    def __init__(self, transport: Transport) -> None:
        self.queue: asyncio.Queue[bytes | str | None] = asyncio.Queue(RECEIVE_QUEUE)
        self.superseded = asyncio.Event()
        self.aside: type[Exception] = Superseded  # what a wait raises once ``superseded`` is set
        self._transport = transport
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        while True:
            message = await self._transport.receive()
            await self.queue.put(message)  # waits while the queue is full: back-pressure
            if message is None:
                return

    async def next(self, timeout: float | None) -> Any:
        """The next client message, or ``TIMEOUT``; raises once superseded or the reader died."""
        assert self._reader is not None
        if not self.queue.empty():
            return self.queue.get_nowait()
        get = asyncio.ensure_future(self.queue.get())
        aside = asyncio.ensure_future(self.superseded.wait())
        try:
            await asyncio.wait({get, aside, self._reader}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            aside.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        if self.superseded.is_set():
            raise self.aside
        if self._reader.done():
            failure = None if self._reader.cancelled() else self._reader.exception()
            raise ReaderFailed(f"reading from the socket failed: {failure!r}")
        return TIMEOUT

    async def until(self, future: asyncio.Future[Any]) -> Any:
        """``await future``, unless the connection is superseded first."""
        aside = asyncio.ensure_future(self.superseded.wait())
        try:
            await asyncio.wait({future, aside}, return_when="FIRST_COMPLETED")
        finally:
            aside.cancel()
        if self.superseded.is_set():
            future.cancel()  # a shield: the session's own work goes on
            raise self.aside
        return future.result()


class Driving:
    """What the session registry may tell the connection driving a session."""

    inbox: Inbox

    def supersede(self) -> None:
        self.inbox.superseded.set()

    def shut_down(self) -> None:
        self.inbox.aside = ShuttingDown
        self.inbox.superseded.set()


class Connection(Driving):
    """The protocol state machine of one WebSocket connection."""

    def __init__(self, services: StreamServices, transport: Transport) -> None:
        self.services = services
        self.limits = services.limits
        self.transport = transport
        self.log = services.new_log()
        self.inbox = Inbox(transport)
        self.control = 1
        self.record: SessionRecord | None = None
        self.fatal: ModelUnavailable | None = None
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        self.inbox.start()
        try:
            await self._run()
        finally:
            self.inbox.stop()
            if self.record is not None:
                self.services.registry.release(self.record, self)
            await asyncio.to_thread(self.log.close)  # FLAC encoding is blocking work

    async def _run(self) -> None:
        try:
            opening = await self._opening()
            record = self._attach(opening)
            await self.send(opened(opening, record.journal.ack_seq))
            self.log.event(
                "protocol_started",
                session_id=record.session_id,
                resume=opening.resume,
                ack_seq=record.journal.ack_seq,
                context_len=len(record.session.hints.context),
            )
            async with self.services.manager.hold("asr"):
                await self._serve(record)
        except ProtocolError as exc:
            self.log.event("protocol_error", reason=exc.code, **exc.log_fields)
            await self._fail(exc.code, exc.message, exc.close_code)
        except (ModelUnavailable, ModelBusy) as exc:
            self.log.event("model_unavailable", message=str(exc))
            await self._fail("model_unavailable", str(exc), CLOSE_INTERNAL)
        except Disconnected:
            ack_seq = self.record.journal.ack_seq if self.record else -1
            self.log.event("disconnect", session_id=self.record and self.record.session_id, ack_seq=ack_seq)
        except Superseded:
            self.log.event("superseded")
            await self.transport.close(CLOSE_NORMAL)
        except Exception as exc:
            log.exception("dictation connection failed")
            self.log.event("error", message=f"{type(exc).__name__}: {exc}")
            await self._fail("internal_error", f"internal error: {type(exc).__name__}: {exc}", CLOSE_INTERNAL)

    async def _fail(self, code: str, message: str, close_code: int) -> None:
        try:
            await self.send(error(code, message))
            await self.transport.close(close_code)
        except Exception:  # noqa: BLE001 - the socket may already be gone
            log.debug("could not deliver error %s", code)

    # -- messages ------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.transport.send(message)

    async def _opening(self) -> Opening:
        message = await self.inbox.next(self.limits.start_timeout_sec)
        if message is TIMEOUT:
            raise protocol_error(START_TIMEOUT, timeout_sec=self.limits.start_timeout_sec)
        if message is None:
            raise Disconnected
        if isinstance(message, bytes):
            raise protocol_error(AUDIO_BEFORE_START)
        data = parse_json(message, self.limits.max_text_bytes)
        kind = data.get("type")
        if kind in ("start", "resume"):
            return parse_opening(data, self.limits)
        if kind == "stop":
            raise protocol_error(STOP_BEFORE_START)
        raise protocol_error(UNSUPPORTED_MESSAGE, message_type=kind)

    def _attach(self, opening: Opening) -> SessionRecord:
        """Claim the session: resume the held one, or begin a new incarnation."""
        try:
            language = normalize_language(opening.language)
        except UnsupportedLanguage as exc:
            raise ProtocolError("unsupported_language", str(exc)) from None
        svc = self.services

        def new_session() -> DictationSession:
            return DictationSession(svc.new_vad(), svc.new_speaker(), svc.settings, opening.context, language)

        record = svc.registry.claim(opening, self, new_session)
        self.control = opening.control
        session = record.session
        # ▲ a resume keeps the session's context and language unless it restates them
        session.hints.context = opening.context or session.hints.context
        session.hints.language = language or session.hints.language
        session.reopen()
        session.log = self.log.event
        session.emit = self._emit
        self.record = record
        return record

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        """Events from the session's background decodes."""
        record = self.record
        if record is None or not self.services.registry.drives(record, self):
            return
        if kind == "partial":
            self.services.registry.touch(record)
            await self.send(partial(record.session_id, data["text"], data["previous"]))
        elif kind == "model_unavailable":
            self.fatal = ModelUnavailable(data["message"])

    # -- the session ---------------------------------------------------------

    def _check(self, record: SessionRecord) -> None:
        if not self.services.registry.drives(record, self):
            raise Superseded
        if self.fatal is not None:
            raise self.fatal

    async def _serve(self, record: SessionRecord) -> None:
        last_frame = time.monotonic()
        while True:
            message = await self.inbox.next(RECEIVE_POLL_SEC)
            self._check(record)
            if isinstance(message, bytes):
                await self._frame(record, message)
                last_frame = time.monotonic()
            elif message is None:
                raise Disconnected
            elif message is not TIMEOUT:
                data = parse_json(message, self.limits.max_text_bytes)
                kind = data.get("type")
                if kind == "stop":
                    await self._stop(record, parse_stop(data, self.limits))
                    return
                raise protocol_error(
                    ALREADY_STARTED if kind in ("start", "resume") else UNSUPPORTED_MESSAGE, message_type=kind
                )
            elif time.monotonic() - last_frame > self.limits.session_idle_sec:
                raise protocol_error(SESSION_IDLE, idle_sec=self.limits.session_idle_sec)
            record.session.schedule(self.services.decoder)

    async def _frame(self, record: SessionRecord, message: bytes) -> None:
        seq, pcm = parse_frame(message, self.limits.max_frame_bytes)
        journal, session = record.journal, record.session
        if journal.is_duplicate(seq):
            self.log.event("duplicate_audio", session_id=record.session_id, seq=seq, ack_seq=journal.ack_seq)
            await self.send(ack(record.session_id, journal.ack_seq))
            return
        if session.heard_sec + len(pcm) / BYTES_PER_SECOND > self.limits.max_session_sec:
            limit = self.limits.max_session_sec
            raise protocol_error(SESSION_TOO_LONG, heard_sec=session.heard_sec, limit=limit)
        ready = journal.accept(seq, pcm)
        self.services.manager.touch("asr")
        for payload in ready:
            await self.log.audio(payload)  # archived before it is acknowledged
        await self.send(ack(record.session_id, journal.ack_seq))
        self.services.registry.touch(record)
        for payload in ready:
            samples = pcm16_to_float(payload)
            await session.feed(samples, passes_energy_gate(samples))

    async def _stop(self, record: SessionRecord, stop: Stop) -> None:
        registry, session = self.services.registry, record.session
        session.begin_stop()
        self.log.event(
            "stop_requested",
            session_id=record.session_id,
            stop_id=stop.stop_id,
            ack_seq=record.journal.ack_seq,
            final_captured_seq=stop.captured,
            control_protocol=self.control,
        )
        answered = registry.replay_stop(record, stop.stop_id)
        if answered is not None:
            if registry.is_fresh(answered):
                self.log.event("stop_result_replayed", stop_id=stop.stop_id)
                await self._answer(record, stop.stop_id, answered.text or "", answered.recognized_through)
            else:
                self.log.event("stop_result_expired", stop_id=stop.stop_id, ttl_sec=registry.stop_ttl)
                await self._expired(record, stop.stop_id, "stop_result_expired")
            return
        if stop.captured is not None and stop.captured > 0 and not record.journal.has_audio:
            self.log.event("stop_session_lost", stop_id=stop.stop_id, want_through_seq=stop.captured)
            await self._expired(record, stop.stop_id, "session_not_held")
            return
        incomplete = stop.captured is not None and not await self._await_coverage(record, stop.captured)
        if incomplete:
            self.log.event(
                "stop_audio_incomplete",
                stop_id=stop.stop_id,
                have_through_seq=record.journal.ack_seq + 1,
                want_through_seq=stop.captured,
            )
        result = await self.inbox.until(session.finalize(self.services.decoder))
        self._check(record)
        record.journal.forget_ahead()
        recognized = record.journal.ack_seq + 1 if result.decoded and not incomplete else None
        registry.record_stop(record, stop.stop_id, result.text, recognized)
        _log_final(self.log.event, stop, result, recognized, incomplete, self.control)
        self._session_ended(session, result.text)
        await self._answer(record, stop.stop_id, result.text, recognized)

    def _session_ended(self, session: DictationSession, text: str) -> None:
        """Tell the rot detector; its failure must not cost the user the final."""
        stats = session.stats()
        try:
            self.services.on_session_end(stats["signal_sec"], text, stats["partials"])
        except Exception:  # a broken detector must not fail the dictation
            log.exception("on_session_end hook failed")

    async def _await_coverage(self, record: SessionRecord, captured: int) -> bool:
        """Wait up to 2 s for frames ``0..captured-1``, still acking (and keeping) audio."""
        deadline = time.monotonic() + COVERAGE_WAIT_SEC
        while record.journal.ack_seq < captured - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            message = await self.inbox.next(remaining)
            if message is None:
                raise Disconnected
            if isinstance(message, bytes):
                await self._frame(record, message)
            # text messages during the wait are dropped (contract §2.9 step 4)
        return True

    async def _answer(self, record: SessionRecord, stop_id: str, text: str, recognized: int | None) -> None:
        through = recognized if self.control >= 2 else None
        await self.send(final(record.session_id, stop_id, text, through))
        await self.send(done(record.session_id, stop_id))
        self.log.event("done", stop_id=stop_id)
        await self._end()

    async def _expired(self, record: SessionRecord, stop_id: str, reason: str) -> None:
        await self.send(stop_expired(record.session_id, stop_id, reason))
        await self._end()

    async def _end(self) -> None:
        await asyncio.sleep(POST_DONE_PAUSE_SEC)
        await self.transport.close(CLOSE_NORMAL)
