"""The Python client against a real server process (tiny checkpoints, real
engine, real sockets): dictation with a dropped connection, coverage
fallback, typed errors, batch, alignment, health and unload.

What the server actually received is read back from its archives (session
``input.flac`` per connection, HTTP uploads), so "no audio lost" is checked
on the server's side, not inferred from the client's bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from polyasr_client import (
    AlignResult,
    BadRequest,
    Dictation,
    InvalidRequest,
    Link,
    ManifestEntry,
    ModelUnavailable,
    PolyAsrClient,
    UnsupportedLanguage,
    UploadTooLarge,
    WebSocketLink,
    connect_websocket,
    decode_frame,
    stream_pcm,
)

from tests.audio_util import speech, wav_bytes
from tests.client.conftest import MAX_UPLOAD_MB
from tests.conftest import LiveServer

FRAME = 3200

# A final on a loaded 2-core CI machine can take longer than a client's usual
# 15 s; these tests are about coverage, not about that timeout.
SLOW_MACHINE_FINAL_SEC = 120.0


def frame_count(pcm: bytes) -> int:
    return -(-len(pcm) // FRAME)


def _wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the server's archive")


def session_audio(logs: Path, session_id: str) -> list[tuple[bool, bytes]]:
    """``(resumed, pcm)`` of every archived connection of ``session_id``, in
    connection order; waits until each has been closed and encoded."""

    def collect() -> list[tuple[bool, bytes]] | None:
        found = []
        for folder in sorted((logs / "sessions").glob("*/*-ws-*")):
            events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
            opened = [e for e in events if e["type"] == "protocol_started"]
            if not opened or opened[0]["session_id"] != session_id:
                continue
            if events[-1]["type"] != "close":
                return None
            flac = folder / "input.flac"
            pcm = soundfile.read(flac, dtype="int16")[0].astype("<i2").tobytes() if flac.exists() else b""
            found.append((bool(opened[0]["resume"]), events[0]["t_ms"], pcm))
        return [(resumed, pcm) for resumed, _, pcm in sorted(found, key=lambda f: f[0])] or None

    return _wait_for(collect)


def archived_upload(logs: Path, filename: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The audio (as the server decoded it) and sidecar it archived for an upload named ``filename``."""

    def find() -> tuple[np.ndarray, dict[str, Any]] | None:
        for sidecar in (logs / "http").glob("*/*/upload.json"):
            meta = json.loads(sidecar.read_text())
            if meta["filename"] == filename:
                audio, _rate = soundfile.read(sidecar.parent / meta["audio_file"], dtype="float32")
                return audio, meta
        return None

    return _wait_for(find)


def same_audio(archived: np.ndarray, pcm: bytes) -> bool:
    """The archive's FLAC holds the PCM16 the client sent, to PCM16 precision."""
    sent = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    return archived.shape == sent.shape and bool(np.allclose(archived, sent, atol=1 / 16384))


class LossyLink:
    """A network that silently loses every frame from ``first_lost`` on while
    the connection stays up: the server never gets them, the client never
    learns it until the final."""

    def __init__(self, inner: Link, first_lost: int) -> None:
        self.inner = inner
        self.first_lost = first_lost

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes) and decode_frame(message)[0] >= self.first_lost:
            return
        await self.inner.send(message)

    async def recv(self) -> str | bytes:
        return await self.inner.recv()

    async def close(self) -> None:
        await self.inner.close()


async def test_dictation_is_covered_and_partials_follow_the_delta_rule(
    asr_server: LiveServer, speech_pcm: bytes
) -> None:
    partials: list[tuple[str, str | None]] = []
    d = Dictation(
        asr_server.url,
        language="en",
        on_partial=lambda text, delta: partials.append((text, delta)),
        final_timeout=SLOW_MACHINE_FINAL_SEC,
    )
    async with d:
        await stream_pcm(d, speech_pcm, pace=3)
        result = await d.stop()
    frames = frame_count(speech_pcm)
    assert result.source == "stream" and result.fallback_reason is None and result.text
    assert result.recognized_through_seq == result.final_captured_seq == frames
    assert d.ledger.acked == frames - 1 and d.stats.reconnects == 0
    assert partials, "partials are on for this server"
    shown = ""
    for text, delta in partials:
        shown = shown + delta if delta is not None else text
        assert shown == text
    [(resumed, received)] = session_audio(asr_server.logs, d.session_id)
    assert not resumed and received == speech_pcm


async def test_a_dropped_connection_is_resumed_without_losing_audio(
    asr_server: LiveServer, speech_pcm: bytes
) -> None:
    links: list[WebSocketLink] = []

    async def connect(url: str, api_key: str | None) -> WebSocketLink:
        link = await connect_websocket(url, api_key)
        links.append(link)
        return link

    d = Dictation(asr_server.url, language="en", connect=connect, final_timeout=SLOW_MACHINE_FINAL_SEC)
    await d.start()
    for index, offset in enumerate(range(0, len(speech_pcm), FRAME)):
        if index == 30:
            links[0].connection.transport.abort()  # the network drops mid-dictation
        await d.send_audio(speech_pcm[offset : offset + FRAME])
        await _pause()
    result = await d.stop()
    frames = frame_count(speech_pcm)
    assert len(links) == 2 and d.stats.reconnects == 1 and d.stats.connections == 2
    assert d.stats.resent_frames >= 1  # at least the frame sent into the dead socket
    assert result.source == "stream" and result.fallback_reason is None
    assert result.recognized_through_seq == result.final_captured_seq == frames
    archived = session_audio(asr_server.logs, d.session_id)
    assert [resumed for resumed, _ in archived] == [False, True]
    assert archived[0][1] and archived[1][1]
    assert b"".join(pcm for _, pcm in archived) == speech_pcm  # every frame once, in order


async def _pause() -> None:
    """A little real time per frame, so acks and partials interleave."""
    await asyncio.sleep(0.01)


async def test_an_uncovered_final_falls_back_to_the_batch_endpoint(
    asr_server: LiveServer, speech_pcm: bytes
) -> None:
    async def lossy(url: str, api_key: str | None) -> Link:
        return LossyLink(await connect_websocket(url, api_key), first_lost=40)

    d = Dictation(asr_server.url, language="en", connect=lossy)
    async with d:
        await stream_pcm(d, speech_pcm, pace=0)
        result = await d.stop()
    assert result.source == "batch" and result.fallback_reason == "uncovered"
    assert result.recognized_through_seq is None and result.stream_text is not None
    assert result.final_captured_seq == frame_count(speech_pcm)
    upload, meta = archived_upload(asr_server.logs, f"{d.session_id}.wav")
    assert same_audio(upload, speech_pcm)  # the whole utterance, frames the socket lost included
    assert result.text == meta["text"] and meta["language"] == "en"


async def test_a_session_the_server_never_heard_falls_back_to_the_batch_endpoint(
    asr_server: LiveServer, speech_pcm: bytes
) -> None:
    async def deaf(url: str, api_key: str | None) -> Link:
        return LossyLink(await connect_websocket(url, api_key), first_lost=0)

    d = Dictation(asr_server.url, language="en", connect=deaf)
    async with d:
        await stream_pcm(d, speech_pcm[: 20 * FRAME], pace=0)
        result = await d.stop()
    assert (result.source, result.fallback_reason) == ("batch", "stop_expired:session_not_held")
    upload, meta = archived_upload(asr_server.logs, f"{d.session_id}.wav")
    assert same_audio(upload, speech_pcm[: 20 * FRAME]) and result.text == meta["text"]


async def test_an_unsupported_language_raises_its_typed_error(asr_server: LiveServer) -> None:
    d = Dictation(asr_server.url, language="klingon")
    with pytest.raises(UnsupportedLanguage) as caught:
        await d.start()
    assert caught.value.code == "unsupported_language" and "klingon" in caught.value.message


async def test_batch_transcription_in_every_format(asr_server: LiveServer) -> None:
    wav = wav_bytes(speech("voice_a"))
    async with PolyAsrClient(asr_server.url) as client:
        as_json = await client.transcribe(wav, language="en")
        as_text = await client.transcribe(wav, language="en", response_format="text")
        verbose = await client.transcribe(wav, language="en", response_format="verbose_json")
    assert as_json.text and as_json.raw == {"text": as_json.text}
    assert as_text.text.strip() == as_json.text == verbose.text
    assert verbose.duration == pytest.approx(len(speech("voice_a")) / 16000, abs=0.01)
    assert verbose.raw is not None and "language" in verbose.raw


async def test_batch_upload_progress_reaches_the_total(asr_server: LiveServer) -> None:
    wav = wav_bytes(speech("voice_b"))
    progress: list[tuple[int, int]] = []
    async with PolyAsrClient(asr_server.url) as client:
        await client.transcribe(
            wav, language="en", on_progress=lambda sent, total: progress.append((sent, total))
        )
    total = progress[-1][1]
    assert total > len(wav) and progress[-1][0] == total and len(progress) >= len(wav) // 65536


async def test_batch_errors_are_typed(asr_server: LiveServer, tmp_path: Path) -> None:
    async with PolyAsrClient(asr_server.url) as client:
        with pytest.raises(BadRequest) as bad:
            await client.transcribe(b"this is not audio", filename="notes.txt")
        with pytest.raises(InvalidRequest) as invalid:
            await client.transcribe(wav_bytes(speech("voice_a")), language="klingon")
        big = tmp_path / "long.wav"
        big.write_bytes(wav_bytes(np.zeros(int(MAX_UPLOAD_MB * 1024 * 1024 / 2) + 16000, np.float32)))
        with pytest.raises(UploadTooLarge) as too_large:
            await client.transcribe(big)
    assert bad.value.status == 400 and bad.value.message
    assert invalid.value.status == 422 and "klingon" in invalid.value.message
    assert too_large.value.status == 413 and "MB" in too_large.value.message


SENTENCES = "Hello world. This is a test!"


def check_alignment(result: AlignResult, duration: float) -> None:
    """Random weights time words nonsensically; the server still clamps and
    orders them, and the client must carry every field through."""
    assert result.segments and " + " in result.model
    times = [t for s in result.segments for w in s.words for t in (w.start, w.end)]
    assert times == sorted(times) and times[0] >= 0.0 and times[-1] <= duration + 1e-3
    for segment in result.segments:
        assert segment.start <= segment.end and all(w.text in segment.text for w in segment.words)


async def test_align_a_transcript_and_a_recognized_upload(asr_server: LiveServer) -> None:
    voice = speech("voice_a")
    progress: list[tuple[int, int]] = []
    async with PolyAsrClient(asr_server.url) as client:
        given = await client.align(wav_bytes(voice), text=SENTENCES, language="en")
        heard = await client.align(
            wav_bytes(voice), language="en", on_progress=lambda sent, total: progress.append((sent, total))
        )
    assert given.text == SENTENCES and given.language == "English"
    assert [s.text for s in given.segments] == ["Hello world.", "This is a test!"]
    assert [w.text for s in given.segments for w in s.words] == ["Hello", "world", "This", "is", "a", "test"]
    check_alignment(given, len(voice) / 16000)
    assert heard.text and heard.language == "English"
    check_alignment(heard, len(voice) / 16000)
    assert progress[-1][0] == progress[-1][1] > len(wav_bytes(voice))


async def test_align_manifest_of_files_on_the_server(asr_server: LiveServer, tmp_path: Path) -> None:
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    first.write_bytes(wav_bytes(speech("voice_a")[: 3 * 16000]))
    second.write_bytes(wav_bytes(speech("voice_b")[: 3 * 16000]))
    entries = [
        ManifestEntry(str(first), id="one", text="Hello world."),
        ManifestEntry(str(second), offset=10.0, id="two", text="Good morning."),
    ]
    async with PolyAsrClient(asr_server.url) as client:
        result = await client.align_manifest(entries, language="en")
        with pytest.raises(BadRequest) as missing:
            await client.align_manifest([ManifestEntry(str(tmp_path / "gone.wav"), id="gone")])
    assert [s.text for s in result.segments] == ["Hello world.", "Good morning."]
    assert (
        result.segments[0].end <= 3.001
        and 10.0 <= result.segments[1].start <= result.segments[1].end <= 13.001
    )
    assert missing.value.status == 400 and "gone" in missing.value.message


def conversation() -> np.ndarray:
    """Voice A, a pause, voice B: two speakers in turn (small enough for
    the upload limit of this module's server, with a reference beside it)."""
    pause = np.zeros(8000, np.float32)
    return np.concatenate([speech("voice_a")[: 4 * 16000], pause, speech("voice_b")[:72000]])


def reference_b() -> bytes:
    """Three seconds of voice B that the conversation does not hold."""
    return wav_bytes(speech("voice_b")[72000:120000])


async def test_diarize_names_a_known_speaker_and_align_carries_speakers(asr_server: LiveServer) -> None:
    audio = wav_bytes(conversation())
    reference = reference_b()
    async with PolyAsrClient(asr_server.url) as client:
        result = await client.diarize(audio, known_speakers={"bob": reference})
        aligned = await client.align(audio, language="en", diarize=True)
        with pytest.raises(BadRequest) as too_short:
            await client.diarize(audio, known_speakers={"bob": reference[:20000]})
    assert [s.speaker for s in result.segments] == ["A", "bob"]
    assert result.duration == pytest.approx(len(conversation()) / 16000, abs=0.01)
    assert [t.speaker for t in aligned.turns] == ["A", "B"]
    assert aligned.segments and {s.speaker for s in aligned.segments} <= {"A", "B"}
    assert aligned.to_json()["turns"][1]["speaker"] == "B"
    assert too_short.value.status == 400 and "known_speaker_references[0]" in too_short.value.message


async def test_align_manifest_with_diarize_labels_speakers_across_files(
    asr_server: LiveServer, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    first.write_bytes(wav_bytes(speech("voice_a")[: 4 * 16000]))
    second.write_bytes(wav_bytes(speech("voice_b")[: 4 * 16000]))
    entries = [
        ManifestEntry(str(first), text="Hello world."),
        ManifestEntry(str(second), offset=10.0, text="Good morning."),
    ]
    async with PolyAsrClient(asr_server.url) as client:
        result = await client.align_manifest(entries, language="en", diarize=True, max_speakers=2)
    assert [t.speaker for t in result.turns] == ["A", "B"]
    assert result.turns[0].end <= 4.001 and result.turns[1].start >= 10.0
    assert [s.speaker for s in result.segments] == ["A", "B"]


async def test_align_errors_are_typed(asr_server: LiveServer) -> None:
    wav = wav_bytes(speech("voice_a")[:16000])
    async with PolyAsrClient(asr_server.url) as client:
        with pytest.raises(InvalidRequest) as language:
            await client.align(wav, text="hi", language="klingon")
        with pytest.raises(InvalidRequest) as chunk:
            await client.align(wav, text="hi", max_chunk_seconds=0)
        with pytest.raises(BadRequest):
            await client.align(b"this is not audio", text="hi", filename="notes.txt")
    assert language.value.status == chunk.value.status == 422
    assert chunk.value.detail.startswith("max_chunk_seconds: ")  # the field is named


async def test_health_and_unload(asr_server: LiveServer) -> None:
    async with PolyAsrClient(asr_server.url) as client:
        await client.transcribe(wav_bytes(speech("voice_a")[:16000]), language="en")  # asr is resident now
        health = await client.health()
        unloaded = await client.unload()
        after = await client.health()
    assert health["status"] in ("ok", "degraded") and "asr" in health["manager"]["resident"]
    assert "asr" in unloaded["unloaded"] and unloaded["manager"]["resident"] == []
    assert after["manager"]["resident"] == []


async def test_an_unloadable_model_is_typed_on_both_paths(
    live_server: Any, tmp_path: Path, speech_pcm: bytes
) -> None:
    server = live_server(POLYASR_MODEL=str(tmp_path / "no-model"))
    d = Dictation(server.url, language="en", final_timeout=SLOW_MACHINE_FINAL_SEC)
    async with d:
        await stream_pcm(d, speech_pcm[: 30 * FRAME], pace=0)  # speech: silence needs no model
        with pytest.raises(ModelUnavailable):
            await d.stop()
    async with PolyAsrClient(server.url) as client:
        with pytest.raises(ModelUnavailable) as batch:
            await client.transcribe(wav_bytes(speech("voice_a")), language="en")
    assert batch.value.status == 503
