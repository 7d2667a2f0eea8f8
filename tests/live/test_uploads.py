"""Uploads whatever a client sends: decoded duration capped
(413 naming the limit) for transcriptions, /v1/align and manifest entries;
long uploads decoded and queued piece by piece; a client that leaves
cancels its queued work; a stream that fails after its 200 ends with an
OpenAI-style ``error`` event."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from polyasr.audio.decoding import AudioTooLong, decoded_blocks, quiet_pieces, split_at_quiet
from polyasr.core.constants import SAMPLE_RATE
from polyasr.models.transcriber import MAX_PIECE_SEC, PIECES_IN_FLIGHT, TranscribeRequest
from tests.audio_util import encode, speech
from tests.conftest import LOOPBACK
from tests.live.test_metrics import scrape, value

SR = SAMPLE_RATE


def silence_flac(seconds: float) -> bytes:
    """Long silence in very few bytes: what makes bytes a poor bound on memory."""
    return encode(np.zeros(int(seconds * SR), np.float32), "flac")[0]


def test_decoding_stops_as_soon_as_the_cap_is_passed() -> None:
    data = silence_flac(600)
    assert len(data) < 200_000  # ten minutes, a few hundred KB at most
    seen = 0
    with pytest.raises(AudioTooLong, match=r"30 s limit \(POLYASR_MAX_AUDIO_SEC\)"):
        for block in decoded_blocks(io.BytesIO(data), max_sec=30):
            seen += len(block)
    assert 29 * SR < seen <= 30 * SR  # nothing past the cap reached the caller


def test_pieces_cut_while_decoding_match_cutting_the_whole() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(95 * SR) * 0.1).astype(np.float32)
    audio[40 * SR : 40 * SR + 800] = 0  # a quiet spot inside the search window
    blocks = np.array_split(audio, 377)  # odd block sizes, like a decoder's frames
    streamed = list(quiet_pieces(blocks, MAX_PIECE_SEC))
    whole = split_at_quiet(audio, MAX_PIECE_SEC)
    assert [len(p) for p in streamed] == [len(p) for p in whole] and len(whole) == 4
    assert all(np.array_equal(a, b) for a, b in zip(streamed, whole, strict=True))


def test_overlong_audio_is_413_for_every_upload_route(make_client: Any, tmp_path: Path) -> None:
    http, spy = make_client(peer=LOOPBACK, POLYASR_MAX_AUDIO_SEC="20", POLYASR_STREAMING_PROBE="0")
    long = silence_flac(300)
    path = tmp_path / "long.flac"
    path.write_bytes(long)
    answers = [
        http.post("/v1/audio/transcriptions", files={"file": ("long.flac", long)}),
        http.post("/v1/audio/transcriptions", files={"file": ("long.flac", long)}, data={"stream": "true"}),
        http.post("/v1/align", files={"file": ("long.flac", long)}, data={"text": "hello"}),
        http.post("/v1/align/manifest", json={"manifest": [{"path": str(path), "id": "big", "text": "hi"}]}),
    ]
    for response in answers:
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "audio_too_long"
        assert "20 s limit (POLYASR_MAX_AUDIO_SEC)" in response.json()["detail"]
    assert "manifest entry big" in answers[-1].json()["detail"]
    assert not spy.aligned  # refused before any alignment
    ok = http.post("/v1/audio/transcriptions", files={"file": ("s.flac", silence_flac(15))})
    assert ok.status_code == 200  # under the cap: served as before


def test_an_upload_is_decoded_while_its_file_is_still_being_read(make_client: Any) -> None:
    """The first piece reaches the model before the source has produced the
    second: pieces are queued as they come, not after decoding the whole."""
    http, spy = make_client(POLYASR_STREAMING_PROBE="0")
    transcriber = http.app.state.services.transcriber  # type: ignore[attr-defined]
    voice = speech()

    async def scenario() -> tuple[int, int]:
        more = asyncio.Event()

        async def source() -> AsyncIterator[np.ndarray]:
            yield voice
            await more.wait()  # the rest of the file is "still decoding"
            yield voice

        pieces = transcriber.stream_pieces(source(), TranscribeRequest())
        first = await anext(pieces)
        decoded_before_more = len(spy.batches)
        more.set()
        rest = [piece async for piece in pieces]
        assert first.end == pytest.approx(len(voice) / SR) and rest[0].start == first.end
        return decoded_before_more, len(spy.batches)

    assert http.portal is not None
    before, after = http.portal.call(scenario)
    assert before == 1 and after == 2


def test_a_long_upload_is_never_queued_whole(make_client: Any) -> None:
    """Decoding waits for a free slot: at most PIECES_IN_FLIGHT pieces are
    queued ahead of the first result, however long the upload."""
    http, _ = make_client(POLYASR_STREAMING_PROBE="0")
    transcriber = http.app.state.services.transcriber  # type: ignore[attr-defined]
    second = speech()[:SR]

    async def scenario() -> tuple[int, int]:
        pulled = 0

        async def source() -> AsyncIterator[np.ndarray]:
            nonlocal pulled
            for _ in range(40):
                pulled += 1
                yield second

        pieces = transcriber.stream_pieces(source(), TranscribeRequest())
        await anext(pieces)
        ahead = pulled
        return ahead, 1 + len([piece async for piece in pieces])

    assert http.portal is not None
    ahead, total = http.portal.call(scenario)
    assert ahead <= PIECES_IN_FLIGHT + 1 and total == 40


def post_raw(port: int, body: bytes, boundary: str) -> socket.socket:
    """Send a whole multipart POST over a socket we can drop at will."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def multipart(data: bytes, boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.flac"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def asr_state(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=30).json()["manager"]["unit_state"]["asr"]


def batch_runs(url: str) -> float:
    return value(scrape(url), "polyasr_decode_seconds_count", unit="asr", kind="batch")


def test_a_client_that_leaves_cancels_its_queued_decodes(live_server: Any) -> None:
    server = live_server(POLYASR_STREAMING_PROBE="0")
    url = server.url
    pieces = 48  # at most 8 per batch: at least 6 batches if the work ran to the end
    sock = post_raw(server.port, multipart(silence_flac(pieces * MAX_PIECE_SEC), "zz"), "zz")
    deadline = time.monotonic() + 120
    while batch_runs(url) < 1:  # the first piece has been decoded by the model
        assert time.monotonic() < deadline, "no decode started"
        time.sleep(0.05)
    sock.close()  # the client goes away
    runs_at_leave = batch_runs(url)
    assert runs_at_leave <= 3, "the test needs most of the upload still to decode"
    deadline = time.monotonic() + 60
    while (state := asr_state(url))["leases"] or state["queue_depth"]:
        assert time.monotonic() < deadline, f"work still held after the client left: {state}"
        time.sleep(0.1)
    # At most the batch already on the model finishes; nothing queued runs.
    assert batch_runs(url) <= runs_at_leave + 1
    assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"  # and it keeps serving


def test_a_stream_that_fails_after_its_200_ends_with_an_error_event(
    live_server: Any, tiny: Any, tmp_path: Path
) -> None:
    model = tmp_path / "asr-copy"
    shutil.copytree(tiny.asr, model)
    server = live_server(POLYASR_MODEL=str(model), POLYASR_STREAMING_PROBE="0")
    upload = {"file": ("long.flac", silence_flac(24 * MAX_PIECE_SEC))}
    events: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.url, timeout=180) as http:
        with http.stream("POST", "/v1/audio/transcriptions", files=upload, data={"stream": "true"}) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 1:  # mid-stream, the model goes away for good
                    model.rename(tmp_path / "gone")
                    assert http.post("/model/unload").status_code == 200
        assert http.get("/health").status_code == 200  # the server keeps serving
    kinds = [event["type"] for event in events]
    assert kinds[0] == "transcript.text.delta" and "transcript.text.done" not in kinds
    last = events[-1]
    assert last["type"] == "error" and set(last["error"]) == {"message", "type", "code"}
    assert last["error"]["code"] in ("model_unavailable", "internal_error")
