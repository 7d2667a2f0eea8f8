"""The dictation protocol on one WebSocket connection. No
FastAPI in here: the route hands over a transport with ``receive``/``send``/``close``.

A connection opens with ``start`` or ``resume`` (within ``START_TIMEOUT_SEC``),
acknowledges every frame after archiving it and before reporting anything
derived from it, and ends after exactly one answered ``stop`` (``final`` +
``done``, or ``stopExpired``), a refusal (its own code; 1008, 1009 for
oversize, 1013 when busy or shutting down), a model failure (1011), or the
end of a shutdown drain (``server_shutting_down``, 1012: resume after the restart). The session it drives —
journal, recognition state, stop results — belongs to the registry
(:mod:`polyasr.live.basr.sessions`); a newer connection for the same session supersedes
this one, which then steps aside at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from polyasr.audio.decoding import pcm16_to_float
from polyasr.audio.speech import passes_energy_gate
from polyasr.core.confidence import ScoredText
from polyasr.core.constants import BYTES_PER_SECOND
from polyasr.core.languages import UnsupportedLanguage, normalize_language
from polyasr.core.threads import BATCH
from polyasr.dictation.recognizer import FinalResult
from polyasr.dictation.session import DictationSession
from polyasr.live.basr.services import LiveServices
from polyasr.live.basr.sessions import SessionRecord
from polyasr.live.basr.stopstore import StopRecord
from polyasr.live.basr.wire import (
    ALREADY_STARTED,
    AUDIO_BEFORE_START,
    SESSION_IDLE,
    SESSION_TOO_LONG,
    START_TIMEOUT,
    STOP_BEFORE_START,
    TOO_MANY_DUPLICATES,
    UNSUPPORTED_MESSAGE,
    Opening,
    Stop,
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
    stop_expired,
    word_confidence,
    words,
)
from polyasr.live.basr.words import WordsOf, decoded_words, replayed_words
from polyasr.live.refusals import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    ProtocolError,
    internal_error,
    protocol_error,
)
from polyasr.live.socket import TIMEOUT, Disconnected, Driving, Inbox, Superseded, Transport
from polyasr.live.strays import Strays
from polyasr.models.health import SessionOutcome
from polyasr.models.manager import ModelBusy
from polyasr.models.unit import ModelUnavailable

log = logging.getLogger("polyasr.ws")

COVERAGE_WAIT_SEC = 2.0
RECEIVE_POLL_SEC = 0.1
POST_DONE_PAUSE_SEC = 0.05


def _log_stop(event: Callable[..., None], record: SessionRecord, stop: Stop, control: int) -> None:
    event(
        "stop_requested",
        session_id=record.session_id,
        stop_id=stop.stop_id,
        ack_seq=record.journal.ack_seq,
        final_captured_seq=stop.captured,
        control_protocol=control,
    )


def _log_incomplete(event: Callable[..., None], record: SessionRecord, stop: Stop) -> None:
    event(
        "stop_audio_incomplete",
        stop_id=stop.stop_id,
        have_through_seq=record.journal.ack_seq + 1,
        want_through_seq=stop.captured,
    )


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


def _session_ended(services: LiveServices, session: DictationSession, text: str) -> None:
    """Tell the rot detector; its failure must not cost the user the final."""
    stats = session.stats()
    outcome = SessionOutcome(
        stats["signal_sec"], text, stats["partials"], stats["partial_decodes"], stats["wall_sec"]
    )
    try:
        services.on_session_end(outcome)
    except Exception:  # a broken detector must not fail the dictation
        log.exception("on_session_end hook failed")


def _confidence(record: SessionRecord, result: FinalResult) -> list[dict[str, Any]] | None:
    """The final's word confidence, for a session that asked for it; its
    words, if it asked for them too, get the same scores."""
    if not record.session.confidence:
        return None
    scored = ScoredText.of(result.text, result.tokens)
    if record.words is not None:
        record.words.scored = scored
    return word_confidence(scored)


class Connection(Driving):
    """The protocol state machine of one WebSocket connection."""

    def __init__(self, services: LiveServices, transport: Transport) -> None:
        self.services = services
        self.limits = services.limits
        self.transport = transport
        self.log = services.new_log()
        self.inbox = Inbox(transport)
        self.control = 1
        self.record: SessionRecord | None = None
        self.fatal: ModelUnavailable | None = None
        self.duplicates = Strays(self.limits.max_duplicate_frames)
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        self.inbox.start()
        try:
            await self._run()
        finally:
            self.inbox.stop()
            if self.record is not None:
                self.services.registry.release(self.record, self)
            await BATCH.run(self.log.close)  # FLAC encoding is blocking batch work

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
        except Exception as exc:  # noqa: BLE001 - logged under its error id
            error_id, message = internal_error(exc, log)
            self.log.event("error", message=f"{type(exc).__name__}: {exc}", error_id=error_id)
            await self._fail("internal_error", message, CLOSE_INTERNAL)

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
        record = svc.registry.claim(
            opening,
            self,
            lambda: svc.new_session(
                opening.context, language, words=opening.words, confidence=opening.confidence
            ),
        )
        self.control = opening.control
        session = record.session
        # a resume keeps the session's context and language unless it restates them
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
        last_audio = time.monotonic()
        while True:
            message = await self.inbox.next(RECEIVE_POLL_SEC)
            self._check(record)
            if isinstance(message, bytes):
                if await self._frame(record, message):
                    last_audio = time.monotonic()  # only new audio is activity, not a duplicate
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
            elif time.monotonic() - last_audio > self.limits.session_idle_sec:
                raise protocol_error(SESSION_IDLE, idle_sec=self.limits.session_idle_sec)
            record.session.schedule(self.services.decoder)

    async def _frame(self, record: SessionRecord, message: bytes) -> bool:
        """Take one frame; whether it was new audio (a duplicate is acknowledged, not used)."""
        seq, pcm = parse_frame(message, self.limits.max_frame_bytes)
        journal, session = record.journal, record.session
        if journal.is_duplicate(seq):
            line = self.duplicates.note()
            if line is not None:
                self.log.event(
                    "duplicate_audio", session_id=record.session_id, seq=seq, ack_seq=journal.ack_seq, **line
                )
            if self.duplicates.exceeded:
                raise protocol_error(TOO_MANY_DUPLICATES, duplicates=self.duplicates.count)
            await self.send(ack(record.session_id, journal.ack_seq))
            return False
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
        return True

    async def _stop(self, record: SessionRecord, stop: Stop) -> None:
        registry, session = self.services.registry, record.session
        session.begin_stop()
        _log_stop(self.log.event, record, stop, self.control)
        answered = registry.replay_stop(record, stop.stop_id)
        if answered is not None:
            if registry.is_fresh(answered):
                self.log.event("stop_result_replayed", stop_id=stop.stop_id)
                replayed = functools.partial(replayed_words, registry, record, stop.stop_id, answered.words)
                await self._answer(record, stop.stop_id, answered, replayed)
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
            _log_incomplete(self.log.event, record, stop)
        result = await self.inbox.until(session.finalize(self.services.decoder))
        self._check(record)
        record.journal.forget_ahead()
        recognized = record.journal.ack_seq + 1 if result.decoded and not incomplete else None
        answer = registry.record_stop(
            record, stop.stop_id, result.text, recognized, _confidence(record, result)
        )
        _log_final(self.log.event, stop, result, recognized, incomplete, self.control)
        _session_ended(self.services, session, result.text)
        words_of = functools.partial(decoded_words, registry, record, stop.stop_id)
        await self._answer(record, stop.stop_id, answer, words_of)

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
            # text messages during the wait are dropped
        return True

    async def _answer(
        self, record: SessionRecord, stop_id: str, answer: StopRecord, words_of: WordsOf
    ) -> None:
        """``final`` at once, then (when the session asked for them) its
        ``words`` as soon as they are aligned, then ``done``."""
        through = answer.recognized_through if self.control >= 2 else None
        await self.send(final(record.session_id, stop_id, answer.text or "", through, answer.scores()))
        if (aligned := words_of()) is not None:
            outcome = await self.inbox.until(aligned)
            self.log.event("words_sent", stop_id=stop_id, **outcome.summary())
            await self.send(words(record.session_id, stop_id, outcome.to_json()))
        await self.send(done(record.session_id, stop_id))
        self.log.event("done", stop_id=stop_id)
        await self._end()

    async def _expired(self, record: SessionRecord, stop_id: str, reason: str) -> None:
        await self.send(stop_expired(record.session_id, stop_id, reason))
        await self._end()

    async def _end(self) -> None:
        await asyncio.sleep(POST_DONE_PAUSE_SEC)
        await self.transport.close(CLOSE_NORMAL)
