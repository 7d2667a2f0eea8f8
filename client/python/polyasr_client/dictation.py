"""One utterance over ``WS /ws/transcribe`` (control protocol v2), recovered
across dropped connections, with a proof that the final heard all of it.

Every captured frame stays in a :class:`FrameLedger`. When the socket drops,
the dictation reconnects, sends ``resume`` for the same session, resends the
frames after the server's ``ackSeq`` and, if it had already stopped, the
same ``stop`` again (same ``stopId``, so the server finalizes once). A final
counts only if ``recognizedThroughSeq`` reaches ``finalCapturedSeq``;
otherwise, and on ``stopExpired`` or no final at all, the whole utterance goes
to ``POST /v1/audio/transcriptions`` and the result says it came from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from polyasr_client.errors import ConnectionLost, PolyAsrError, ServerShuttingDown, error_from_message
from polyasr_client.framing import BYTES_PER_SECOND, FRAME_BYTES, encode_frame
from polyasr_client.http_api import PolyAsrClient
from polyasr_client.ledger import FrameLedger
from polyasr_client.link import Connector, Link, LinkClosed, connect_websocket
from polyasr_client.messages import (
    DEFAULT_URL,
    api_key_or_env,
    covers,
    opening_message,
    stop_message,
    websocket_url,
)
from polyasr_client.partials import PartialText
from polyasr_client.results import Word, WordConfidence
from polyasr_client.wav import wav_from_pcm16

PartialCallback = Callable[[str, str | None], None]
"""``(text, delta)``: append ``delta`` to what is shown, or show ``text``
instead when ``delta`` is None (the hypothesis was rewritten)."""


@dataclass(frozen=True)
class DictationResult:
    """The utterance's text and where it came from.

    ``source`` is ``"stream"`` when the socket's final proved coverage, and
    ``"batch"`` when the text is the batch endpoint's for the buffered audio;
    ``fallback_reason`` then says why (``uncovered``, ``stop_expired:<reason>``,
    ``no_final``) and ``stream_text`` keeps the unproven final, if any.
    ``confidence`` (asked with ``Dictation(confidence=True)``) is each word of
    a ``"stream"`` text with the model's confidence in it; None otherwise.

    With ``words=True``, a stream result carries the final's ``words`` (times
    in seconds from the first frame), or ``words_reason`` says why there are
    none (e.g. ``language_not_aligned``); a batch result carries neither.
    """

    text: str
    source: Literal["stream", "batch"]
    final_captured_seq: int
    recognized_through_seq: int | None
    stream_text: str | None
    fallback_reason: str | None
    words: tuple[Word, ...] | None = None
    words_reason: str | None = None
    confidence: tuple[WordConfidence, ...] | None = None


@dataclass
class DictationStats:
    """What recovery cost, for logs and tests."""

    connections: int = 0
    reconnects: int = 0
    frames_sent: int = 0
    resent_frames: int = 0


class Dictation:
    """``start()``, ``send_audio()`` per captured chunk, then ``stop()``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        session_id: str | None = None,
        api_key: str | None = None,
        language: str | None = None,
        context: str | None = None,
        words: bool = False,
        confidence: bool = False,
        on_partial: PartialCallback | None = None,
        http: PolyAsrClient | None = None,
        connect: Connector = connect_websocket,
        final_timeout: float = 15.0,
        open_timeout: float = 10.0,
        max_reconnects: int = 5,
        reconnect_delay: float = 0.2,
    ) -> None:
        self.url = url
        self.api_key = api_key_or_env(api_key)
        self.session_id = session_id or uuid.uuid4().hex
        self.stop_id = f"{self.session_id}-stop"
        self.language = language
        self.context = context
        self.words = words
        self.confidence = confidence
        self.ledger = FrameLedger()
        self.partial = PartialText()
        self.stats = DictationStats()
        self._ws_url = websocket_url(url)
        self._on_partial = on_partial
        self._http = http
        self._connect = connect
        self._final_timeout = final_timeout
        self._open_timeout = open_timeout
        self._max_reconnects = max_reconnects
        self._reconnect_delay = reconnect_delay
        self._state: Literal["new", "streaming", "stopping", "ended"] = "new"
        self._link: Link | None = None
        self._generation = 0  # one per connection; events of older ones are ignored
        self._lost_generation = 0
        self._stop: dict[str, Any] | None = None
        self._answer: dict[str, Any] | None = None  # the final or stopExpired
        self._words: dict[str, Any] | None = None  # the final's words message, when asked for
        self._failure: PolyAsrError | None = None
        self._settled = asyncio.Event()
        self._recovery: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Dictation:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._state != "ended":
            await self.abort()

    # -- public --------------------------------------------------------------

    async def start(self) -> None:
        """Connect and open the session; raises the typed error the server
        answers with (e.g. :class:`UnsupportedLanguage`)."""
        if self._state != "new":
            raise RuntimeError("a Dictation is started once")
        self._state = "streaming"
        try:
            await self._open("start")
        except LinkClosed as exc:
            self._state = "ended"
            raise ConnectionLost(f"cannot open a dictation at {self._ws_url}: {exc}") from exc
        except BaseException:
            self._state = "ended"
            raise

    async def send_audio(self, pcm: bytes) -> int:
        """Capture one frame of 16 kHz mono PCM16LE and send it if connected;
        returns its seq. While the socket is down the frame is only kept, and
        sent by the resume."""
        if self._failure is not None:
            raise self._failure
        if self._state != "streaming":
            raise RuntimeError("send_audio() needs a started dictation that is not stopped")
        seq = self.ledger.add(pcm)
        link, generation = self._link, self._generation
        if link is not None:
            try:
                await link.send(encode_frame(seq, pcm))
                self.stats.frames_sent += 1
            except LinkClosed:
                self._link_lost(generation)
        return seq

    async def stop(self) -> DictationResult:
        """Claim every captured frame, wait for the final and check its
        coverage; recover through the batch endpoint when it is not proven."""
        if self._state != "streaming":
            raise RuntimeError("stop() needs a started dictation that is not stopped")
        self._state = "stopping"
        captured = self.ledger.next_seq
        self._stop = stop_message(self.session_id, self.stop_id, captured)
        link, generation = self._link, self._generation
        if link is not None and self._failure is None:
            try:
                await link.send(json.dumps(self._stop))
            except LinkClosed:
                self._link_lost(generation)
        try:
            async with asyncio.timeout(self._final_timeout):
                await self._settled.wait()
        except TimeoutError:
            pass
        finally:
            await self._shutdown()
        if self._failure is not None:
            raise self._failure
        return await self._result(captured)

    async def abort(self) -> None:
        """Drop the utterance without a stop (the server keeps the session
        for its resume TTL, then forgets it)."""
        await self._shutdown()

    # -- connection ----------------------------------------------------------

    async def _open(self, kind: Literal["start", "resume"]) -> None:
        link = await self._connect(self._ws_url, self.api_key)
        self._generation += 1
        generation = self._generation
        try:
            opening = opening_message(
                kind,
                self.session_id,
                language=self.language,
                context=self.context,
                words=self.words,
                confidence=self.confidence,
            )
            # A server that refuses the socket (no key) says why and closes at
            # once: the send may fail, and the reason is then the next message.
            with contextlib.suppress(LinkClosed):
                await link.send(json.dumps(opening))
            try:
                reply = _decode(await asyncio.wait_for(link.recv(), self._open_timeout))
            except TimeoutError:
                raise LinkClosed(f"no reply to {kind} within {self._open_timeout:g} s") from None
            if reply.get("type") == "error":
                raise error_from_message(reply)
            expected = "started" if kind == "start" else "resumed"
            if reply.get("type") != expected:
                raise PolyAsrError(f"expected {expected!r}, got {reply.get('type')!r}")
            self.stats.connections += 1
            # read acks while resending, or a long resend could stall on a full queue
            self._spawn(self._read(link, generation))
            if kind == "resume":
                self.ledger.rewind(int(reply.get("ackSeq", -1)))
                await self._replay(link)
        except BaseException:
            self._spawn(link.close())
            raise
        # no await since _replay's last check: a frame captured from here on
        # sees this link and sends itself
        self._link = link

    async def _replay(self, link: Link) -> None:
        """Resend what the server lacks, then the stop if one was asked for.
        Loops on ``next_seq`` so frames captured meanwhile are included."""
        seq = self.ledger.acked + 1
        while seq < self.ledger.next_seq:
            await link.send(encode_frame(seq, self.ledger.payload(seq)))
            self.stats.resent_frames += 1
            seq += 1
        if self._stop is not None:
            await link.send(json.dumps(self._stop))

    async def _read(self, link: Link, generation: int) -> None:
        try:
            while not self._settled.is_set():
                message = await link.recv()
                if isinstance(message, str):
                    decoded = _decode(message)
                    if decoded.get("code") == ServerShuttingDown.code:  # a restart: resume after it
                        raise LinkClosed(str(decoded.get("error") or "the server is shutting down"))
                    self._dispatch(decoded)
        except LinkClosed:
            self._link_lost(generation)
        except PolyAsrError as exc:
            self._fail(exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ack":
            self.ledger.ack(int(message.get("ackSeq", -1)))
        elif kind == "partial":
            delta = self.partial.apply(message)
            if self._on_partial is not None:
                self._on_partial(self.partial.text, delta)
        elif kind in ("final", "stopExpired"):
            self._answer = message
            if kind == "stopExpired" or not self.words:
                self._settled.set()  # with words, the answer is complete at their message
        elif kind == "words" or (kind == "done" and self._answer is not None):
            self._words = message if kind == "words" else None
            self._settled.set()
        elif kind == "error":
            self._fail(error_from_message(message))

    def _link_lost(self, generation: int) -> None:
        """A socket ended before the answer: recover unless that socket was
        already replaced, or a recovery is under way (it retries by itself)."""
        if generation != self._generation or self._settled.is_set() or self._state == "ended":
            return
        self._lost_generation = generation
        dead, self._link = self._link, None
        if dead is not None:
            self._spawn(dead.close())
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        for attempt in range(self._max_reconnects):
            if attempt:
                await asyncio.sleep(self._reconnect_delay * 2 ** (attempt - 1))
            try:
                await self._open("resume")
            except (LinkClosed, ServerShuttingDown):  # still going down: try again after the delay
                continue
            except PolyAsrError as exc:
                self._fail(exc)
                return
            if self._lost_generation != self._generation:
                self.stats.reconnects += 1
                return
            dead, self._link = self._link, None  # it died while resending
            if dead is not None:
                self._spawn(dead.close())
        tries = self._max_reconnects
        self._fail(ConnectionLost(f"dictation {self.session_id}: no connection after {tries} tries"))

    def _fail(self, error: PolyAsrError) -> None:
        if self._failure is None:
            self._failure = error
        self._settled.set()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        self._state = "ended"
        self._settled.set()
        pending = list(self._tasks)
        if self._recovery is not None:
            pending.append(self._recovery)
        for task in pending:
            task.cancel()
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(LinkClosed, TimeoutError):
                await asyncio.wait_for(link.close(), 2.0)
        await asyncio.gather(*pending, return_exceptions=True)

    # -- result --------------------------------------------------------------

    async def _result(self, captured: int) -> DictationResult:
        answer = self._answer or {}
        through = answer.get("recognizedThroughSeq")
        through = through if isinstance(through, int) and not isinstance(through, bool) else None
        stream_text = str(answer.get("text", "")) if answer.get("type") == "final" else None
        if stream_text is not None and (covers(answer, captured) or captured == 0):
            words, reason = _words(self._words)
            scored = answer.get("confidence")
            confidence = None if scored is None else tuple(WordConfidence.from_json(w) for w in scored)
            return DictationResult(
                stream_text, "stream", captured, through, stream_text, None, words, reason, confidence
            )
        if answer.get("type") == "final":
            reason = "uncovered"
        elif answer.get("type") == "stopExpired":
            reason = f"stop_expired:{answer.get('reason')}"
        else:
            reason = "no_final"
        text = await self._batch() if captured else ""
        return DictationResult(text, "batch", captured, through, stream_text, reason)

    async def _batch(self) -> str:
        """The buffered utterance through ``POST /v1/audio/transcriptions``."""
        wav = wav_from_pcm16(self.ledger.pcm())
        client = self._http or PolyAsrClient(self.url, api_key=self.api_key)
        try:
            result = await client.transcribe(
                wav, filename=f"{self.session_id}.wav", language=self.language, context=self.context
            )
        finally:
            if self._http is None:
                await client.aclose()
        return result.text


def _words(message: dict[str, Any] | None) -> tuple[tuple[Word, ...] | None, str | None]:
    """``(words, reason)`` from the ``words`` message (neither without one)."""
    if message is None:
        return None, None
    if "words" not in message:
        return None, str(message.get("reason"))
    words = tuple(Word(str(w["text"]), float(w["start"]), float(w["end"])) for w in message["words"])
    return words, None


def _decode(message: str | bytes) -> dict[str, Any]:
    """A server message; the server sends JSON objects only."""
    try:
        data = json.loads(message)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PolyAsrError(f"the server sent something that is not a JSON object: {message[:80]!r}")
    return data


async def stream_pcm(
    dictation: Dictation, pcm: bytes, *, frame_bytes: int = FRAME_BYTES, pace: float = 1.0
) -> None:
    """Send ``pcm`` as frames, each once it would have been captured at
    ``pace`` x real time (``0`` sends as fast as the socket takes them)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for offset in range(0, len(pcm), frame_bytes):
        chunk = pcm[offset : offset + frame_bytes]
        if pace > 0:
            due = began + (offset + len(chunk)) / BYTES_PER_SECOND / pace
            await asyncio.sleep(max(0.0, due - loop.time()))
        await dictation.send_audio(chunk)
