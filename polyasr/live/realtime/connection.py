"""OpenAI Realtime transcription on one WebSocket connection (``/v1/realtime``),
on the same dictation pipeline as ``/ws/transcribe``. No FastAPI in here: the
route hands over a transport with ``receive``/``send``/``close``.

Each input audio buffer becomes one :class:`~polyasr.dictation.session.DictationSession`
(speech gate with Silero and the main-speaker filter, stable-prefix commits,
one final at FINAL priority), so a turn costs what a BASR utterance costs.
What the Realtime protocol adds lives here:

* **Turns.** With ``server_vad`` a second Silero stream watches the audio: a
  turn starts at the first window at or above ``threshold`` (with
  ``prefix_padding_ms`` before it) and is committed after
  ``silence_duration_ms`` without speech. With ``turn_detection: null`` the
  client commits. Audio outside any turn is archived but not transcribed,
  as on OpenAI.
* **Context across turns.** A turn's final is decoded after the previous
  turn's, with the session prompt and the previous turns' text as context —
  and ``completed`` events therefore arrive in turn order.
* **Append-only deltas.** A delta carries only text no later decode can
  revise: the turn's stable prefix once it is committed, then the rest of the
  final, so concatenated deltas equal the ``completed`` transcript. (Partial
  hypotheses may still change and are not decoded at all here.)

Client errors become ``error`` events and the socket stays open, up to
``MAX_CLIENT_ERRORS`` of them; limit breaches (message size, session length,
idleness, too many errors) close it, as do a full server (1013) and the end
of a shutdown drain (1012). Only new audio (or a transcript still pending)
keeps a connection from being idle: a stream of other events does not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyasr.audio.speech import SpeakerDecision, passes_energy_gate
from polyasr.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from polyasr.core.text import join_texts
from polyasr.core.threads import BATCH
from polyasr.dictation.gate import SpeakerCheck, VadWindows
from polyasr.dictation.recognizer import SessionDecoder
from polyasr.dictation.session import DictationSession
from polyasr.live.basr.services import LiveServices
from polyasr.live.realtime.audio import InputAudio
from polyasr.live.realtime.events import (
    CLOSE_POLICY,
    MIN_COMMIT_MS,
    RealtimeError,
    SessionConfig,
    apply_update,
    audio_of,
    cleared,
    commit_empty,
    committed,
    completed,
    delta,
    error,
    failed,
    ms,
    new_id,
    parse_event,
    session_event,
    speech_started,
    speech_stopped,
)
from polyasr.live.refusals import ProtocolError, internal_error
from polyasr.live.socket import TIMEOUT, Driving, Inbox, ReaderFailed, Transport
from polyasr.live.strays import Strays
from polyasr.models.manager import ModelBusy
from polyasr.models.unit import ModelUnavailable

log = logging.getLogger("polyasr.realtime")

RECEIVE_POLL_SEC = 0.1
# Committed turns awaiting their transcript; at this many the connection reads no further
# event until one completes, so TCP back-pressure (not a queue without end) slows the client.
MAX_PENDING_TURNS = 4
WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


class LockedSpeaker:
    """The connection's main-speaker filter, shared by its turns: enrolled once,
    checked by one turn at a time (a finishing turn and the next may overlap)."""

    def __init__(self, speaker: SpeakerCheck) -> None:
        self._speaker = speaker
        self._lock = threading.Lock()

    def check(self, samples: np.ndarray) -> SpeakerDecision:
        with self._lock:
            return self._speaker.check(samples)


@dataclass
class Turn:
    """One input audio buffer on its way to becoming a conversation item."""

    item_id: str
    session: DictationSession
    start: int  # 16 kHz sample index in the connection's audio
    samples: int = 0

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class Preroll:
    """The recent quiet windows under ``server_vad``: the prefix padding of the next turn."""

    def __init__(self) -> None:
        self.windows: list[np.ndarray] = []

    def keep(self, window: np.ndarray, samples: int) -> None:
        """Add a quiet window, holding no more than ``samples`` beyond the newest window's start."""
        self.windows.append(window)
        while self.windows and sum(map(len, self.windows)) - len(self.windows[0]) >= samples:
            self.windows.pop(0)

    def take(self, samples: int) -> np.ndarray:
        """The last ``samples`` held (fewer if less was heard); the preroll empties."""
        held = np.concatenate(self.windows) if self.windows else np.zeros(0, np.float32)
        self.clear()
        return held[len(held) - min(samples, len(held)) :]

    def clear(self) -> None:
        self.windows = []


class Items:
    """Committed turns on their way to ``completed``: one after another, each
    decoded with the session prompt and the previous turns' text as context."""

    def __init__(
        self,
        connection: RealtimeConnection,
        decoder: SessionDecoder,
        log: Callable[..., None],
        max_context: int,
    ) -> None:
        self.connection = connection
        self.decoder = decoder
        self.log = log
        self.max_context = max_context
        self.previous: str | None = None
        self.transcripts: list[str] = []
        self.last: asyncio.Task[None] | None = None
        self.pending: dict[asyncio.Task[None], Turn] = {}

    def context(self) -> str:
        """The prompt and the previous turns' text: what the next decode continues."""
        return join_texts([self.connection.config.prompt, *self.transcripts])[-self.max_context :]

    async def commit(self, turn: Turn) -> None:
        """``committed`` now; the transcription in the background, after the previous one."""
        turn.session.begin_stop()
        previous, self.previous = self.previous, turn.item_id
        await self.connection.send(committed(turn.item_id, previous))
        task = asyncio.get_running_loop().create_task(self._complete(turn, self.last))
        self.last = task
        self.pending[task] = turn
        task.add_done_callback(lambda done: self.pending.pop(done, None))
        if len(self.pending) >= MAX_PENDING_TURNS:
            await asyncio.wait(set(self.pending), return_when=asyncio.FIRST_COMPLETED)

    def cancel(self) -> None:
        """The connection ended: nobody awaits these transcripts any more."""
        for task, turn in list(self.pending.items()):
            task.cancel()
            turn.session.cancel_work()

    async def _complete(self, turn: Turn, before: asyncio.Task[None] | None) -> None:
        """Deltas, then ``completed`` (or ``failed``), after the previous turn's."""
        sent = turn.session.stable_text
        if sent:
            await self.connection.send(delta(turn.item_id, sent))
        if before is not None:
            await asyncio.wait({before})
        turn.session.hints.context = self.context()
        try:
            result = await turn.session.finalize(self.decoder)
        except (ModelUnavailable, ModelBusy) as exc:
            self.log("transcription_failed", item_id=turn.item_id, message=str(exc))
            await self.connection.send(failed(turn.item_id, "model_unavailable", str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - logged under its error id; the session goes on
            error_id, message = internal_error(exc, log)
            detail = f"{type(exc).__name__}: {exc}"
            self.log("transcription_failed", item_id=turn.item_id, message=detail, error_id=error_id)
            await self.connection.send(failed(turn.item_id, "transcription_failed", message))
            return
        text = result.text
        rest = text[len(sent) :] if text.startswith(sent) else ""
        if rest:
            await self.connection.send(delta(turn.item_id, rest))
        self.transcripts.append(text)
        context = len(turn.session.hints.context)
        self.log("completed", item_id=turn.item_id, text=text, source=result.source, context_chars=context)
        await self.connection.send(completed(turn.item_id, text, turn.seconds))


class RealtimeConnection(Driving):
    """The Realtime protocol state machine of one WebSocket connection."""

    def __init__(self, services: LiveServices, transport: Transport, model: str) -> None:
        self.services = services
        self.limits = services.limits
        # base64 takes 4 bytes per 3; an append of a whole frame's audio must fit
        self.max_event_bytes = max(
            self.limits.max_text_bytes, -(-services.limits.max_frame_bytes // 3) * 4 + 1024
        )
        self.settings = dataclasses.replace(services.settings, partials_enabled=False)
        self.transport = transport
        self.archive = services.new_log()
        self.inbox = Inbox(transport)
        self.config = SessionConfig(model=model)
        self.speaker = LockedSpeaker(services.new_speaker())
        self.windows = VadWindows(services.new_vad())  # server_vad's own Silero stream
        self.preroll = Preroll()
        self.input: InputAudio | None = None
        self.turn: Turn | None = None
        self.speaking = False
        self.silence_ms = 0
        self.heard = 0  # 16 kHz samples of the whole connection
        self.errors = Strays(self.limits.max_client_errors)  # client errors, capped
        self.updates = Strays(None)  # session.update lines, rate-limited only
        self._send_lock = asyncio.Lock()
        self.items = Items(self, services.decoder, self.archive.event, self.limits.max_context_chars)

    async def run(self) -> None:
        self.inbox.start()
        admitted = False
        try:
            self.services.registry.admit(self)
            admitted = True
            self.archive.event("realtime_started", session=self.config.id, model=self.config.model)
            await self.send(session_event("session.created", self.config))
            async with self.services.manager.hold("asr"):
                await self._serve()
        except ProtocolError as exc:  # refused (busy, draining) or told to shut down
            self.archive.event("protocol_error", reason=exc.code)
            await self._close_with(RealtimeError(exc.code, exc.message), exc.close_code)
        except RealtimeError as exc:
            self.archive.event("protocol_error", reason=exc.code)
            await self._close_with(exc, exc.close or CLOSE_POLICY)
        except ReaderFailed as exc:
            self.archive.event("error", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - logged under its error id
            error_id, message = internal_error(exc, log)
            self.archive.event("error", message=f"{type(exc).__name__}: {exc}", error_id=error_id)
            await self._close_with(RealtimeError("internal_error", message), 1011)
        finally:
            self.inbox.stop()
            self.items.cancel()
            if self.turn is not None:
                self.turn.session.cancel_work()
            if admitted:
                self.services.registry.dismiss(self)
            await BATCH.run(self.archive.close)

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.transport.send(message)

    async def _close_with(self, exc: RealtimeError, code: int) -> None:
        with contextlib.suppress(Exception):  # the socket may already be gone
            await self.send(error(exc))
            await self.transport.close(code)

    # -- events -----------------------------------------------------------------

    async def _serve(self) -> None:
        last_audio = time.monotonic()
        while True:
            message = await self.inbox.next(RECEIVE_POLL_SEC)
            if message is None:
                self.archive.event("disconnect", pending_turns=len(self.items.pending))
                return
            if self.items.pending:
                last_audio = time.monotonic()  # a client awaiting its transcripts is not idle
            if message is TIMEOUT:
                if time.monotonic() - last_audio > self.limits.session_idle_sec:
                    message = f"no audio for {self.limits.session_idle_sec:g} s (POLYASR_SESSION_IDLE_SEC)"
                    raise RealtimeError("session_idle", message, close=CLOSE_POLICY)
            elif await self._event(message):
                last_audio = time.monotonic()
            if self.turn is not None:
                self.turn.session.schedule(self.services.decoder)

    async def _event(self, message: bytes | str) -> bool:
        """One client event; whether it brought new audio. A client error is answered with
        an ``error`` event (the socket stays open) until there have been too many."""
        try:
            return await self._handle(message)
        except RealtimeError as exc:
            if exc.close is not None:
                raise
            line = self.errors.note()
            if line is not None:
                self.archive.event("client_error", code=exc.code, param=exc.param, **line)
            if self.errors.exceeded:
                limit = self.limits.max_client_errors
                message = f"more than {limit} errors on this connection (POLYASR_MAX_CLIENT_ERRORS)"
                raise RealtimeError("too_many_errors", message, close=CLOSE_POLICY) from None
            await self.send(error(exc))
            return False

    async def _handle(self, message: bytes | str) -> bool:
        if isinstance(message, bytes):
            raise RealtimeError(
                "invalid_json", "binary messages are not part of the Realtime API; send JSON text"
            )
        event = parse_event(message, self.max_event_bytes)
        kind, event_id = event["type"], event.get("event_id")
        if kind == "input_audio_buffer.append":
            return await self._append(event)
        if kind == "input_audio_buffer.commit":
            await self._commit(event_id)
        elif kind == "input_audio_buffer.clear":
            await self._clear()
        elif kind == "session.update":
            self.config = apply_update(
                self.config, event, self.limits.max_context_chars, self.input is not None
            )
            line = self.updates.note()
            if line is not None:
                self.archive.event("session_updated", session=self.config.as_dict(), **line)
            await self.send(session_event("session.updated", self.config))
        else:
            supported = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
            message = f"Invalid value: '{kind}'. Supported values are: {supported}."
            raise RealtimeError("invalid_value", message, "type", event_id)
        return False

    # -- audio ------------------------------------------------------------------

    async def _append(self, event: dict[str, Any]) -> bool:
        """Archive and hear one append; whether it held any audio."""
        try:
            payload = base64.b64decode(audio_of(event), validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError(
                "invalid_value", "'audio' is not valid base64", "audio", event.get("event_id")
            ) from None
        if self.input is None:  # the format is fixed from here on: one archive, one rate
            self.input = InputAudio(self.config.format)
            self.archive.rate = self.config.format.rate
        pcm, samples = self.input.decode(payload)
        if (self.heard + len(samples)) / SAMPLE_RATE > self.limits.max_session_sec:
            message = (
                f"the session passed {self.limits.max_session_sec:g} s of audio (POLYASR_MAX_SESSION_SEC)"
            )
            raise RealtimeError("session_too_long", message, close=CLOSE_POLICY)
        await self.archive.audio(pcm)
        self.services.manager.touch("asr")
        await self._hear(samples)
        return len(pcm) > 0

    async def _hear(self, samples: np.ndarray) -> None:
        self.heard += len(samples)
        if self.config.turn is None:
            # audio server_vad's windows held when the session left it comes first
            samples = np.concatenate([self.windows.take_staged(), samples])
            if self.turn is None:
                self.turn = self._new_turn(self.heard - len(samples))
            await self._feed(samples)
            return
        for start, window, prob in await self.windows.push(samples):
            await self._window(start, window, prob)

    async def _window(self, start: int, window: np.ndarray, prob: float) -> None:
        """One Silero window under ``server_vad``: start, grow or end the turn."""
        turn_detection = self.config.turn
        assert turn_detection is not None
        speech = prob >= turn_detection.threshold
        if self.turn is None and not speech:
            self.preroll.keep(window, turn_detection.prefix_padding_ms * SAMPLE_RATE // 1000)
            return
        if self.turn is None:
            padding = self.preroll.take(turn_detection.prefix_padding_ms * SAMPLE_RATE // 1000)
            self.turn = self._new_turn(start - len(padding))
            await self._feed(padding)
        if speech and not self.speaking:
            self.speaking, self.silence_ms = True, 0
            await self.send(speech_started(self.turn.item_id, ms(self.turn.start, SAMPLE_RATE)))
        await self._feed(window)
        self.silence_ms = 0 if speech else self.silence_ms + WINDOW_MS
        if self.speaking and self.silence_ms >= turn_detection.silence_duration_ms:
            await self.send(speech_stopped(self.turn.item_id, ms(start + len(window), SAMPLE_RATE)))
            await self._commit_turn(self.turn)

    def _new_turn(self, start: int) -> Turn:
        svc = self.services
        session = DictationSession(
            svc.new_vad(), self.speaker, self.settings, self.items.context(), self.config.model_language
        )
        session.log = self.archive.event
        turn = Turn(new_id("item"), session, start)
        self.archive.event("turn_started", item_id=turn.item_id, start_ms=ms(start, SAMPLE_RATE))
        return turn

    async def _feed(self, samples: np.ndarray) -> None:
        assert self.turn is not None
        if len(samples):
            self.turn.samples += len(samples)
            await self.turn.session.feed(samples, passes_energy_gate(samples))

    # -- turns ------------------------------------------------------------------

    async def _commit(self, event_id: str | None) -> None:
        """``input_audio_buffer.commit``: the buffer so far becomes an item."""
        if self.input is not None:
            tail = np.concatenate([self.windows.take_staged(), self.input.flush()])
            if len(tail) and (self.turn is not None or self.config.turn is None):
                if self.turn is None:
                    self.turn = self._new_turn(self.heard - len(tail))
                await self._feed(tail)
        turn = self.turn
        if turn is None or turn.samples * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
            raise commit_empty(turn.seconds * 1000 if turn else 0.0, event_id)
        await self._commit_turn(turn)

    async def _commit_turn(self, turn: Turn) -> None:
        self.turn, self.speaking, self.silence_ms = None, False, 0
        self.archive.event("committed", item_id=turn.item_id, audio_sec=round(turn.seconds, 3))
        await self.items.commit(turn)

    async def _clear(self) -> None:
        """``input_audio_buffer.clear``: the uncommitted audio is not transcribed."""
        if self.input is not None:
            self.windows.take_staged()
            self.input.flush()
        self.preroll.clear()
        if self.turn is not None:
            self.archive.event("cleared", item_id=self.turn.item_id, audio_sec=round(self.turn.seconds, 3))
            self.turn.session.cancel_work()
        self.turn, self.speaking, self.silence_ms = None, False, 0
        await self.send(cleared())
