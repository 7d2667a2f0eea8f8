"""A :class:`Dictation` against the scripted in-memory server of ``fakes.py``:
the recovery paths a real server only shows under a broken network.

Mirrored by name in ``client/dart/test/dictation_test.dart``.
"""

from __future__ import annotations

import io
import wave
from typing import Any

import httpx
import pytest
from polyasr_client import (
    ConnectionLost,
    Dictation,
    ModelUnavailable,
    PolyAsrClient,
    Unauthorized,
    UnsupportedLanguage,
    Word,
    WordConfidence,
)

from tests.client.fakes import ScriptedServer, covered_final

FRAMES = [bytes([seq, 0]) * 1600 for seq in range(20)]  # 100 ms each, distinguishable


class Batch:
    """The batch endpoint behind the fallback: records uploads, answers ``text``."""

    def __init__(self, text: str = "from the batch endpoint") -> None:
        self.text = text
        self.uploads: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/audio/transcriptions"
        self.uploads.append(request.content)
        return httpx.Response(200, json={"text": self.text})

    def client(self) -> PolyAsrClient:
        return PolyAsrClient("http://asr.test", transport=httpx.MockTransport(self))

    def uploaded_pcm(self) -> bytes:
        """The PCM of the single WAV that was uploaded."""
        (upload,) = self.uploads
        wav = upload[upload.index(b"RIFF") :]
        with wave.open(io.BytesIO(wav)) as reader:
            return reader.readframes(reader.getnframes())


def dictation(server: ScriptedServer, batch: Batch | None = None, **options: Any) -> Dictation:
    return Dictation(
        "http://asr.test",
        session_id="s",
        language="en",
        connect=server.connect,
        http=(batch or Batch()).client(),
        reconnect_delay=0.01,
        **options,
    )


async def run(d: Dictation, frames: list[bytes] = FRAMES) -> Any:
    await d.start()
    for frame in frames:
        await d.send_audio(frame)
    return await d.stop()


async def test_frames_are_framed_acked_and_claimed_by_the_stop() -> None:
    server = ScriptedServer()
    d = dictation(server)
    result = await run(d)
    assert server.arrivals == [(0, seq) for seq in range(20)]
    assert [server.frames[seq] for seq in range(20)] == FRAMES
    assert d.ledger.acked == 19
    assert server.openings[0]["type"] == "start" and server.openings[0]["control"] == 2
    assert server.stops == [
        {"type": "stop", "protocol": 1, "sessionId": "s", "stopId": "s-stop", "finalCapturedSeq": 20}
    ]
    assert (result.text, result.source, result.fallback_reason) == ("hello world", "stream", None)
    assert result.recognized_through_seq == result.final_captured_seq == 20


async def test_a_final_with_confidence_gives_each_word_its_probability() -> None:
    def scored(server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
        final, done = covered_final(server, stop)
        words = [{"text": "hello", "probability": 0.9}, {"text": "world", "probability": None}]
        return [{**final, "confidence": words}, done]

    server = ScriptedServer(answer=scored)
    result = await run(dictation(server, confidence=True))
    assert server.openings[0]["confidence"] is True
    assert result.confidence == (WordConfidence("hello", 0.9), WordConfidence("world", None))
    plain = await run(dictation(ScriptedServer()))
    assert plain.confidence is None


async def test_partials_reach_the_callback_with_their_delta() -> None:
    server = ScriptedServer(
        partials={
            2: {"type": "partial", "sessionId": "s", "partial": "hel", "delta": "hel"},
            4: {"type": "partial", "sessionId": "s", "partial": "hello", "delta": "lo"},
            6: {"type": "partial", "sessionId": "s", "partial": "help"},
        }
    )
    seen: list[tuple[str, str | None]] = []
    d = dictation(server, on_partial=lambda text, delta: seen.append((text, delta)))
    await run(d)
    assert seen == [("hel", "hel"), ("hello", "lo"), ("help", None)]
    assert d.partial.text == "help"


async def test_a_drop_resumes_and_resends_the_unacked_frames() -> None:
    server = ScriptedServer(drop_at_seq=8)
    d = dictation(server)
    result = await run(d)
    assert [o["type"] for o in server.openings] == ["start", "resume"]
    assert server.openings[1]["sessionId"] == "s" and server.openings[1]["language"] == "en"
    assert [seq for conn, seq in server.arrivals if conn == 0] == list(range(8))
    assert [seq for conn, seq in server.arrivals if conn == 1] == list(range(8, 20))  # nothing twice
    assert [server.frames[seq] for seq in range(20)] == FRAMES
    assert d.stats.reconnects == 1 and d.stats.connections == 2 and d.stats.resent_frames >= 1
    assert result.source == "stream" and result.recognized_through_seq == 20


async def test_resuming_a_lost_session_resends_everything() -> None:
    server = ScriptedServer(drop_at_seq=8, forget_on_resume=True)
    d = dictation(server)
    result = await run(d)
    assert [seq for conn, seq in server.arrivals if conn == 1] == list(range(20))
    assert [server.frames[seq] for seq in range(20)] == FRAMES
    assert result.source == "stream" and result.recognized_through_seq == 20


async def test_the_stop_is_reissued_with_the_same_stop_id_after_a_drop() -> None:
    server = ScriptedServer(drop_first_stop=True)
    d = dictation(server)
    result = await run(d)
    assert len(server.stops) == 2 and server.stops[0] == server.stops[1]
    assert server.stops[1]["stopId"] == "s-stop" and server.stops[1]["finalCapturedSeq"] == 20
    assert [o["type"] for o in server.openings] == ["start", "resume"]
    assert result.source == "stream" and result.text == "hello world"


def _guess(_server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "final", "sessionId": "s", "stopId": stop["stopId"], "text": "a guess"},
        {"type": "done", "sessionId": "s", "stopId": stop["stopId"]},
    ]


async def test_an_uncovered_final_falls_back_to_the_batch_endpoint() -> None:
    server = ScriptedServer(answer=_guess)
    batch = Batch()
    result = await run(dictation(server, batch))
    assert (result.text, result.source, result.fallback_reason) == (
        "from the batch endpoint",
        "batch",
        "uncovered",
    )
    assert result.stream_text == "a guess" and result.recognized_through_seq is None
    assert batch.uploaded_pcm() == b"".join(FRAMES)  # the whole utterance, not just the unacked part


async def test_stop_expired_falls_back_to_the_batch_endpoint() -> None:
    def expired(_server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"type": "stopExpired", "sessionId": "s", "stopId": stop["stopId"], "reason": "session_not_held"}
        ]

    batch = Batch()
    result = await run(dictation(ScriptedServer(answer=expired), batch))
    assert (result.source, result.fallback_reason) == ("batch", "stop_expired:session_not_held")
    assert result.text == "from the batch endpoint" and result.stream_text is None
    assert batch.uploaded_pcm() == b"".join(FRAMES)


async def test_no_final_in_time_falls_back_to_the_batch_endpoint() -> None:
    batch = Batch()
    result = await run(dictation(ScriptedServer(answer=lambda _s, _m: []), batch, final_timeout=0.3))
    assert (result.source, result.fallback_reason) == ("batch", "no_final")
    assert batch.uploaded_pcm() == b"".join(FRAMES)


async def test_a_server_error_raises_its_typed_error_without_fallback() -> None:
    def unavailable(_server: ScriptedServer, _stop: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "error", "code": "model_unavailable", "error": "weights missing"}]

    batch = Batch()
    with pytest.raises(ModelUnavailable, match="weights missing"):
        await run(dictation(ScriptedServer(answer=unavailable), batch))
    assert batch.uploads == []


async def test_a_refused_start_raises_its_typed_error() -> None:
    refusal = {"type": "error", "code": "unsupported_language", "error": "unsupported language 'klingon'"}
    d = dictation(ScriptedServer(refuse_start=refusal))
    with pytest.raises(UnsupportedLanguage, match="klingon"):
        await d.start()
    with pytest.raises(RuntimeError):
        await d.send_audio(FRAMES[0])


async def test_a_socket_refused_before_the_start_raises_its_typed_error() -> None:
    refusal = {"type": "error", "code": "unauthorized", "error": "a valid API key is required"}
    server = ScriptedServer(refuse_socket=refusal)
    with pytest.raises(Unauthorized, match=r"a valid API key is required .*POLYASR_API_KEY"):
        await dictation(server).start()
    assert server.openings == []  # the start never reached it: the reason came first


async def test_a_server_shutting_down_is_resumed_like_a_drop() -> None:
    def restarting(server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
        if len(server.stops) == 1:  # the drain's grace ended before this stop was answered
            return [{"type": "error", "code": "server_shutting_down", "error": "restarting"}]
        return covered_final(server, stop)

    server = ScriptedServer(answer=restarting)
    result = await run(dictation(server))
    assert [o["type"] for o in server.openings] == ["start", "resume"]
    assert len(server.stops) == 2 and server.stops[0] == server.stops[1]
    assert (result.text, result.source) == ("hello world", "stream")


async def test_reconnecting_gives_up_with_connection_lost() -> None:
    server = ScriptedServer(drop_at_seq=5, refuse_after=1)
    d = dictation(server, max_reconnects=3)
    with pytest.raises(ConnectionLost):
        await run(d)
    assert server.attempts == 1 + 3


async def test_frames_captured_while_disconnected_are_sent_by_the_resume() -> None:
    server = ScriptedServer()
    d = dictation(server)
    await d.start()
    for frame in FRAMES[:4]:
        await d.send_audio(frame)
    server.links[0].drop()
    for frame in FRAMES[4:]:  # the link is down or coming back: nothing may be lost
        await d.send_audio(frame)
    result = await d.stop()
    assert [server.frames.get(seq) for seq in range(20)] == FRAMES
    assert len(server.links) == 2 and result.source == "stream"


def _with_words(server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
    """The final, then (from the second stop on: the first link drops before them) its words."""
    final, done = covered_final(server, stop)
    if len(server.stops) == 1:
        return [final]
    timed = [{"text": "hello", "start": 0.1, "end": 0.5}, {"text": "world", "start": 0.6, "end": 1.0}]
    return [final, {"type": "words", "sessionId": "s", "stopId": stop["stopId"], "words": timed}, done]


async def test_words_that_follow_the_final_reach_the_result_across_a_drop() -> None:
    server = ScriptedServer(answer=_with_words)
    result = await run(dictation(server, words=True))
    assert [o["words"] for o in server.openings] == [True, True]  # the resume restates it
    assert len(server.stops) == 2  # a final without its words is not the whole answer
    assert result.source == "stream" and result.text == "hello world"
    assert result.words == (Word("hello", 0.1, 0.5), Word("world", 0.6, 1.0))
    assert result.words_reason is None


async def test_a_reason_comes_instead_of_words() -> None:
    def reason(server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
        final, done = covered_final(server, stop)
        why = {"type": "words", "sessionId": "s", "stopId": stop["stopId"], "reason": "language_not_aligned"}
        return [final, why, done]

    result = await run(dictation(ScriptedServer(answer=reason), words=True))
    assert (result.text, result.words, result.words_reason) == ("hello world", None, "language_not_aligned")
    plain = ScriptedServer()
    result = await run(dictation(plain))
    assert "words" not in plain.openings[0] and (result.words, result.words_reason) == (None, None)
