"""The dictation protocol on one WebSocket connection (contract §2), and the
journal of sessions that outlive connections. No FastAPI in here: the route
hands over a transport with ``receive``/``send``/``close``.

A connection opens with ``start`` or ``resume``, acknowledges every frame
before reporting anything derived from it, and ends after exactly one answered
``stop`` (``final`` + ``done``, or ``stopExpired``), a protocol error (1008) or
a model failure (1011). Sessions stay resumable for ``RESUME_TTL_SEC`` after
their last update; answered stops are replayed by ``stopId`` for
``STOP_RESULT_TTL_SEC`` and remembered as expired long after that, so a late
retry gets ``stop_result_expired``, never a second, different finalization.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyasr_archive import ConnectionArchive
from polyasr_audio import pcm16_to_float
from polyasr_languages import UnsupportedLanguage, normalize_language
from polyasr_manager import ModelBusy, ModelUnavailable
from polyasr_protocol import (
    ALREADY_STARTED,
    AUDIO_BEFORE_START,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    INVALID_JSON,
    STOP_BEFORE_START,
    UNSUPPORTED_MESSAGE,
    Opening,
    ProtocolError,
    ack,
    done,
    error,
    final,
    opened,
    parse_frame,
    parse_opening,
    partial,
    protocol_error,
    stop_expired,
)
from polyasr_speech import passes_energy_gate
from polyasr_stream import DictationSession, SessionDecoder, SpeakerGate, StreamSettings, VadStream

log = logging.getLogger("polyasr.ws")

COVERAGE_WAIT_SEC = 2.0
RECEIVE_POLL_SEC = 0.1
POST_DONE_PAUSE_SEC = 0.05
STOP_TOMBSTONE_SEC = 86_400.0  # how long an expired stopId is still recognized
PRUNE_INTERVAL_SEC = 5.0


class Transport(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the client is gone."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int) -> None: ...


class Disconnected(Exception):
    """The client went away without a stop; the session stays resumable."""


class Superseded(Exception):
    """A newer connection resumed this session; this one steps aside."""


@dataclass
class StopRecord:
    text: str | None  # None once expired (the text is not kept longer than the TTL)
    recognized_through: int | None
    at: float


@dataclass
class SessionRegistry:
    """Session journals and answered stops, in process memory."""

    resume_ttl: float
    stop_ttl: float
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, DictationSession] = field(default_factory=dict)
    stops: dict[tuple[str, str], StopRecord] = field(default_factory=dict)
    owners: dict[str, object] = field(default_factory=dict)

    def held(self, session_id: str) -> DictationSession | None:
        session = self.sessions.get(session_id)
        if session is not None and self.clock() - session.updated_at > self.resume_ttl:
            self._drop(session_id)
            return None
        return session

    def put(self, session: DictationSession) -> None:
        old = self.sessions.get(session.session_id)
        if old is not None and old is not session:
            old.cancel_work()
        self.sessions[session.session_id] = session

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        self.owners.pop(session_id, None)
        if session is not None:
            session.cancel_work()

    def record_stop(self, session_id: str, stop_id: str, text: str, recognized: int | None) -> None:
        self.stops[(session_id, stop_id)] = StopRecord(text, recognized, self.clock())

    def find_stop(self, session_id: str, stop_id: str) -> StopRecord | None:
        return self.stops.get((session_id, stop_id))

    def is_fresh(self, record: StopRecord) -> bool:
        return record.text is not None and self.clock() - record.at <= self.stop_ttl

    def prune(self) -> None:
        """Expire journals and cached stop texts on a timer, not only on the next start."""
        now = self.clock()
        for session_id, session in list(self.sessions.items()):
            if now - session.updated_at > self.resume_ttl and self.owners.get(session_id) is None:
                self._drop(session_id)
        for key, record in list(self.stops.items()):
            age = now - record.at
            if age > STOP_TOMBSTONE_SEC:
                del self.stops[key]
            elif age > self.stop_ttl:
                record.text = None

    async def prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SEC)
            self.prune()


class Manager(Protocol):
    def hold(self, name: str) -> Any: ...

    def touch(self, name: str) -> None: ...


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


_TIMEOUT = object()


class Connection:
    """The protocol state machine of one WebSocket connection."""

    def __init__(self, services: StreamServices, transport: Transport) -> None:
        self.services = services
        self.transport = transport
        self.log = services.new_log()
        self.queue: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self.control = 1
        self.session: DictationSession | None = None
        self.fatal: ModelUnavailable | None = None
        self._send_lock = asyncio.Lock()
        self._opened_at = time.monotonic()

    async def run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await self._run()
        finally:
            reader.cancel()
            if (
                self.session is not None
                and self.services.registry.owners.get(self.session.session_id) is self
            ):
                self.services.registry.owners.pop(self.session.session_id, None)
                self.session.emit = None
                self.session.log = lambda *_a, **_k: None
            await asyncio.to_thread(self.log.close)  # FLAC encoding is blocking work

    async def _run(self) -> None:
        try:
            opening = await self._opening()
            session = self._attach(opening)
            await self.send(opened(opening, session.ack_seq))
            self.log.event(
                "protocol_started",
                session_id=session.session_id,
                resume=opening.resume,
                ack_seq=session.ack_seq,
                context_len=len(session.context),
            )
            async with self.services.manager.hold("asr"):
                await self._serve(session)
        except ProtocolError as exc:
            self.log.event("protocol_error", reason=exc.code, **exc.log_fields)
            await self._fail(exc.code, exc.message, CLOSE_PROTOCOL)
        except (ModelUnavailable, ModelBusy) as exc:
            self.log.event("model_unavailable", message=str(exc))
            await self._fail("model_unavailable", str(exc), CLOSE_INTERNAL)
        except Disconnected:
            session = self.session
            self.log.event(
                "disconnect",
                session_id=session.session_id if session else None,
                ack_seq=session.ack_seq if session else -1,
            )
        except Superseded:
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

    async def _read(self) -> None:
        while True:
            message = await self.transport.receive()
            await self.queue.put(message)
            if message is None:
                return

    async def _next(self, timeout: float | None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return _TIMEOUT

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.transport.send(message)

    @staticmethod
    def _json(text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            raise protocol_error(INVALID_JSON) from None
        if not isinstance(data, dict):
            raise protocol_error(INVALID_JSON)
        return data

    async def _opening(self) -> Opening:
        message = await self._next(None)
        if message is None:
            raise Disconnected
        if isinstance(message, bytes):
            raise protocol_error(AUDIO_BEFORE_START)
        data = self._json(message)
        kind = data.get("type")
        if kind in ("start", "resume"):
            return parse_opening(data)
        if kind == "stop":
            raise protocol_error(STOP_BEFORE_START)
        raise protocol_error(UNSUPPORTED_MESSAGE, message_type=kind)

    def _attach(self, opening: Opening) -> DictationSession:
        """Resume the held session, or begin a fresh one (a ``start`` replaces)."""
        try:
            language = normalize_language(opening.language)
        except UnsupportedLanguage as exc:
            raise ProtocolError("unsupported_language", str(exc)) from None
        registry = self.services.registry
        self.control = opening.control
        session = registry.held(opening.session_id) if opening.resume else None
        if session is None:
            session = DictationSession(
                opening.session_id,
                vad=self.services.new_vad(),
                speaker=self.services.new_speaker(),
                settings=self.services.settings,
                context=opening.context,
                language=language,
                clock=registry.clock,
            )
            registry.put(session)
        else:
            # ▲ the session keeps its context and language unless the resume restates them
            session.context = opening.context or session.context
            session.language = language or session.language
            session.closing = False
        registry.owners[session.session_id] = self
        session.log = self.log.event
        session.emit = self._emit
        self.session = session
        return session

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        """Events from the session's background decodes."""
        session = self.session
        if session is None:
            return
        if kind == "partial":
            await self.send(partial(session.session_id, data["text"], data["previous"]))
        elif kind == "model_unavailable":
            self.fatal = ModelUnavailable(data["message"])

    # -- the session ---------------------------------------------------------

    def _check(self, session: DictationSession) -> None:
        if self.services.registry.owners.get(session.session_id) is not self:
            raise Superseded
        if self.fatal is not None:
            raise self.fatal

    async def _serve(self, session: DictationSession) -> None:
        decoder = self.services.decoder
        while True:
            message = await self._next(RECEIVE_POLL_SEC)
            self._check(session)
            if message is _TIMEOUT:
                session.schedule(decoder)
                continue
            if message is None:
                raise Disconnected
            if isinstance(message, bytes):
                await self._frame(session, message)
                session.schedule(decoder)
                continue
            data = self._json(message)
            kind = data.get("type")
            if kind == "stop":
                await self._stop(session, data)
                return
            if kind in ("start", "resume"):
                raise protocol_error(ALREADY_STARTED, message_type=kind)
            raise protocol_error(UNSUPPORTED_MESSAGE, message_type=kind)

    async def _frame(self, session: DictationSession, message: bytes) -> None:
        seq, pcm = parse_frame(message)
        if session.is_duplicate(seq):
            self.log.event("duplicate_audio", session_id=session.session_id, seq=seq, ack_seq=session.ack_seq)
            await self.send(ack(session.session_id, session.ack_seq))
            return
        ready = session.accept_frame(seq, pcm)
        self.services.manager.touch("asr")
        for payload in ready:
            await self.log.audio(payload)  # archived before it is acknowledged
        await self.send(ack(session.session_id, session.ack_seq))
        for payload in ready:
            samples = pcm16_to_float(payload)
            await session.feed(samples, passes_energy_gate(samples))

    async def _stop(self, session: DictationSession, data: dict[str, Any]) -> None:
        registry = self.services.registry
        stop_id = str(data.get("stopId") or "")
        captured = data.get("finalCapturedSeq")
        if not isinstance(captured, int) or isinstance(captured, bool):
            captured = None
        session.closing = True
        self.log.event(
            "stop_requested",
            session_id=session.session_id,
            stop_id=stop_id,
            ack_seq=session.ack_seq,
            final_captured_seq=captured,
            control_protocol=self.control,
        )
        record = registry.find_stop(session.session_id, stop_id)
        if record is not None:
            if registry.is_fresh(record):
                self.log.event("stop_result_replayed", stop_id=stop_id)
                await self._answer(session, stop_id, record.text or "", record.recognized_through)
            else:
                self.log.event("stop_result_expired", stop_id=stop_id, ttl_sec=registry.stop_ttl)
                await self._expired(session, stop_id, "stop_result_expired")
            return
        if captured is not None and captured > 0 and not session.has_audio:
            self.log.event("stop_session_lost", stop_id=stop_id, want_through_seq=captured)
            await self._expired(session, stop_id, "session_not_held")
            return
        incomplete = captured is not None and not await self._await_coverage(session, captured)
        if incomplete:
            self.log.event(
                "stop_audio_incomplete",
                stop_id=stop_id,
                have_through_seq=session.ack_seq + 1,
                want_through_seq=captured,
            )
        result = await session.finalize(self.services.decoder)
        recognized = session.ack_seq + 1 if result.decoded and not incomplete else None
        registry.record_stop(session.session_id, stop_id, result.text, recognized)
        native = {"native_stream": True} if result.source == "native_stream" else {}
        self.log.event("final", text=result.text, **native)
        source = result.source + ("_incomplete_audio" if incomplete else "")
        self.log.event(
            "final_sent",
            stop_id=stop_id,
            source=source,
            chars=len(result.text),
            recognized_through_seq=recognized,
            control_protocol=self.control,
        )
        await self._answer(session, stop_id, result.text, recognized)

    async def _await_coverage(self, session: DictationSession, captured: int) -> bool:
        """Wait up to 2 s for frames ``0..captured-1``, still acking (and keeping) audio."""
        deadline = time.monotonic() + COVERAGE_WAIT_SEC
        while session.ack_seq < captured - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            message = await self._next(remaining)
            if message is None:
                raise Disconnected
            if isinstance(message, bytes):
                await self._frame(session, message)
            # text messages during the wait are dropped (contract §2.9 step 4)
        return True

    async def _answer(
        self, session: DictationSession, stop_id: str, text: str, recognized: int | None
    ) -> None:
        through = recognized if self.control >= 2 else None
        await self.send(final(session.session_id, stop_id, text, through))
        await self.send(done(session.session_id, stop_id))
        self.log.event("done", stop_id=stop_id)
        await asyncio.sleep(POST_DONE_PAUSE_SEC)
        await self.transport.close(CLOSE_NORMAL)

    async def _expired(self, session: DictationSession, stop_id: str, reason: str) -> None:
        await self.send(stop_expired(session.session_id, stop_id, reason))
        await asyncio.sleep(POST_DONE_PAUSE_SEC)
        await self.transport.close(CLOSE_NORMAL)
