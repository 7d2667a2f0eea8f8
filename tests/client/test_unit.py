"""The client's building blocks, without a server: framing, ack bookkeeping,
the delta rule, the coverage rule, error mapping, WAV, and the HTTP calls'
requests (through httpx's mock transport).

Every test here has a mirror of the same name (underscores as spaces) in
``client/dart/test/``; ``test_lockstep.py`` checks that.
"""

from __future__ import annotations

import io
import json
import wave
from email.message import Message
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any

import httpx
import pytest
from polyasr_client import (
    HTTP_CODES,
    HTTP_ERRORS,
    WS_ERRORS,
    AudioTooLong,
    BadRequest,
    DecodeTimeout,
    Forbidden,
    FrameError,
    FrameLedger,
    InternalError,
    InvalidRequest,
    ManifestEntry,
    ModelBusy,
    ModelUnavailable,
    PartialText,
    PolyAsrClient,
    PolyAsrError,
    ProtocolError,
    ServerBusy,
    ServerShuttingDown,
    ServiceUnavailable,
    TokenLogprob,
    Unauthorized,
    UnsupportedLanguage,
    UploadTooLarge,
    covers,
    decode_frame,
    encode_frame,
    error_from_message,
    error_from_response,
    opening_message,
    stop_message,
    wav_from_pcm16,
    websocket_url,
)

from polyasr.live import refusals
from polyasr.live.basr import wire

# -- framing ---------------------------------------------------------------


def test_frame_header_is_basr_v1_audio_with_a_big_endian_seq() -> None:
    frame = encode_frame(0x0102030405060708, b"\x10\x20")
    assert frame == b"BASR\x01\x01\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x10\x20"


def test_frame_round_trips_seq_and_payload() -> None:
    payload = bytes(range(256)) * 12
    assert decode_frame(encode_frame(41, payload)) == (41, payload)
    assert decode_frame(encode_frame(0, b"")) == (0, b"")


def test_decode_rejects_what_the_server_calls_unframed() -> None:
    good = encode_frame(3, b"\x00\x00")
    for bad in (good[:15], b"BASX" + good[4:], good[:4] + b"\x02" + good[5:], good[:5] + b"\x02" + good[6:]):
        with pytest.raises(FrameError):
            decode_frame(bad)
    flagged = good[:6] + b"\xff\xff" + good[8:]  # reserved bytes are ignored
    assert decode_frame(flagged) == (3, b"\x00\x00")


def test_a_negative_seq_is_refused() -> None:
    with pytest.raises(ValueError, match="seq"):
        encode_frame(-1, b"")


# -- ack bookkeeping -------------------------------------------------------


def test_ledger_numbers_frames_from_zero() -> None:
    ledger = FrameLedger()
    assert [ledger.add(b"a"), ledger.add(b"b"), ledger.add(b"c")] == [0, 1, 2]
    assert ledger.next_seq == 3 and ledger.acked == -1
    assert ledger.unacked() == [0, 1, 2]


def test_ack_is_inclusive_and_never_moves_back() -> None:
    ledger = FrameLedger()
    for _ in range(5):
        ledger.add(b"x")
    ledger.ack(2)
    assert ledger.unacked() == [3, 4]
    ledger.ack(1)  # a late ack from a connection being replaced
    assert ledger.acked == 2
    ledger.ack(99)
    assert ledger.acked == 4 and ledger.unacked() == []


def test_resume_rewinds_to_the_server_ack_seq() -> None:
    ledger = FrameLedger()
    for _ in range(5):
        ledger.add(b"x")
    ledger.ack(4)
    ledger.rewind(1)
    assert ledger.unacked() == [2, 3, 4]
    ledger.rewind(-1)  # the server lost the session: everything again
    assert ledger.unacked() == [0, 1, 2, 3, 4]


def test_ledger_keeps_the_whole_utterance_for_the_fallback() -> None:
    ledger = FrameLedger()
    for chunk in (b"\x01\x00", b"\x02\x00\x03\x00", b"\x04\x00"):
        ledger.add(chunk)
    ledger.ack(2)
    assert ledger.pcm() == b"\x01\x00\x02\x00\x03\x00\x04\x00"
    assert ledger.payload(1) == b"\x02\x00\x03\x00"


# -- the delta rule --------------------------------------------------------


def test_a_delta_is_appended() -> None:
    text = PartialText()
    assert text.apply({"type": "partial", "partial": "turn on the", "delta": "turn on the"}) == "turn on the"
    assert text.apply({"type": "partial", "partial": "turn on the lights", "delta": " lights"}) == " lights"
    assert text.text == "turn on the lights"


def test_a_partial_without_delta_replaces_the_text() -> None:
    text = PartialText()
    text.apply({"type": "partial", "partial": "turn on the", "delta": "turn on the"})
    assert text.apply({"type": "partial", "partial": "turn off"}) is None
    assert text.text == "turn off"


def test_deltas_keep_their_whitespace() -> None:
    text = PartialText()
    text.apply({"type": "partial", "partial": "one", "delta": "one"})
    assert text.apply({"type": "partial", "partial": "one ", "delta": " "}) == " "
    assert text.apply({"type": "partial", "partial": "one  two", "delta": " two"}) == " two"
    assert text.text == "one  two"


def test_a_delta_that_does_not_fit_resyncs_to_the_partial() -> None:
    text = PartialText()
    text.apply({"type": "partial", "partial": "abc", "delta": "abc"})
    # the partial "abcdef" (delta "def") was lost with a dropped connection
    assert text.apply({"type": "partial", "partial": "abcdefgh", "delta": "gh"}) is None
    assert text.text == "abcdefgh"


# -- control messages and the coverage rule --------------------------------


def test_start_declares_v2_and_the_audio_format() -> None:
    assert opening_message("start", "s-1") == {
        "type": "start",
        "protocol": 1,
        "control": 2,
        "sessionId": "s-1",
        "sampleRate": 16000,
        "channels": 1,
        "encoding": "pcm16le",
    }


def test_resume_restates_language_and_context() -> None:
    message = opening_message("resume", "s-1", language="en", context="Zhang Wei")
    assert message["type"] == "resume" and message["sessionId"] == "s-1"
    assert message["language"] == "en" and message["context"] == "Zhang Wei"


def test_confidence_is_asked_in_the_opening() -> None:
    assert opening_message("start", "s-1", confidence=True)["confidence"] is True
    assert "confidence" not in opening_message("resume", "s-1")


def test_stop_claims_the_captured_frames() -> None:
    assert stop_message("s-1", "s-1-stop", 25) == {
        "type": "stop",
        "protocol": 1,
        "sessionId": "s-1",
        "stopId": "s-1-stop",
        "finalCapturedSeq": 25,
    }


def test_a_final_covers_when_recognized_through_reaches_the_captured_count() -> None:
    assert covers({"type": "final", "text": "x", "recognizedThroughSeq": 25}, 25)
    assert covers({"type": "final", "text": "x", "recognizedThroughSeq": 26}, 25)


def test_a_final_without_recognized_through_is_a_guess() -> None:
    assert not covers({"type": "final", "text": "x"}, 25)
    assert not covers({"type": "final", "text": "", "recognizedThroughSeq": None}, 0)


def test_a_final_short_of_the_captured_count_is_a_guess() -> None:
    assert not covers({"type": "final", "text": "x", "recognizedThroughSeq": 24}, 25)
    assert not covers({"type": "final", "text": "x", "recognizedThroughSeq": True}, 1)
    assert not covers({"type": "final", "text": "x", "recognizedThroughSeq": "25"}, 25)


def test_the_websocket_url_follows_the_http_base() -> None:
    assert websocket_url("http://127.0.0.1:8766") == "ws://127.0.0.1:8766/ws/transcribe"
    assert websocket_url("https://asr.example/base/") == "wss://asr.example/base/ws/transcribe"
    with pytest.raises(ValueError):
        websocket_url("ftp://asr.example")


# -- typed errors ----------------------------------------------------------


def test_every_ws_error_code_has_its_own_class() -> None:
    classes = set()
    for code, cls in WS_ERRORS.items():
        error = error_from_message({"type": "error", "code": code, "error": f"text of {code}"})
        assert type(error) is cls and error.code == code and error.message.startswith(f"text of {code}")
        assert error.status is None
        classes.add(cls)
    assert len(classes) == len(WS_ERRORS)
    # every code the server's wire module can send has its class in the client
    server_codes = {
        value[0]
        for value in [*vars(wire).values(), *vars(refusals).values()]
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)
    }
    assert server_codes and server_codes <= set(WS_ERRORS), sorted(server_codes - set(WS_ERRORS))
    protocol = {code for code, cls in WS_ERRORS.items() if issubclass(cls, ProtocolError)}
    assert protocol == {
        "audio_before_start",
        "unframed_audio",
        "unsupported_version",
        "missing_session_id",
        "stop_before_start",
        "unsupported_message",
        "invalid_json",
        "invalid_option",
        # the limits: what the client sent or failed to send
        "text_too_large",
        "frame_too_large",
        "id_too_long",
        "context_too_long",
        "seq_out_of_window",
        "invalid_frame",
        "start_timeout",
        "session_idle",
        "too_many_duplicates",
    }


def test_an_unknown_ws_error_code_is_kept() -> None:
    error = error_from_message({"type": "error", "code": "rate_limited", "error": "slow down"})
    assert type(error) is PolyAsrError and error.code == "rate_limited" and error.message == "slow down"
    assert error_from_message({"error": "boom"}).code == "error"  # the upstream shape, no code


def test_http_statuses_map_to_classes() -> None:
    assert {
        400: BadRequest,
        401: Unauthorized,
        403: Forbidden,
        413: UploadTooLarge,
        422: InvalidRequest,
        500: InternalError,
        503: ServiceUnavailable,
    } == HTTP_ERRORS
    bad = error_from_response(400, {}, json.dumps({"detail": "audio does not decode"}))
    assert isinstance(bad, BadRequest) and bad.status == 400 and bad.message == "audio does not decode"
    assert bad.code == "bad_request"  # no code in the body: the class's own
    busy = error_from_response(503, {"retry-after": "7"}, json.dumps({"detail": "align is in use"}))
    assert type(busy) is ServiceUnavailable and busy.retry_after == 7.0
    invalid = error_from_response(422, {}, json.dumps({"detail": "file: Field required"}))
    assert isinstance(invalid, InvalidRequest) and invalid.detail == invalid.message == "file: Field required"
    other = error_from_response(404, {}, json.dumps({"detail": "Not Found"}))
    assert type(other) is PolyAsrError and other.code == "http_404" and other.status == 404


def test_http_error_codes_pick_their_class_and_are_kept() -> None:
    def answer(status: int, code: str, detail: str = "what was wrong") -> PolyAsrError:
        body = {"detail": detail, "error": {"message": detail, "type": "invalid_request_error", "code": code}}
        return error_from_response(status, {"retry-after": "2"}, json.dumps(body))

    audio = answer(400, "invalid_audio", "the file is empty")
    assert (
        type(audio) is BadRequest and audio.code == "invalid_audio" and audio.message == "the file is empty"
    )
    busy = answer(503, "server_busy")
    assert type(busy) is ServerBusy and not isinstance(busy, ModelUnavailable) and busy.retry_after == 2.0
    assert isinstance(busy, ServiceUnavailable) and busy.code == "server_busy"
    assert type(answer(503, "model_unavailable")) is ModelUnavailable
    assert type(answer(503, "model_busy")) is ModelBusy
    assert type(answer(503, "server_shutting_down")) is ServerShuttingDown
    assert type(answer(503, "decode_timeout")) is DecodeTimeout
    long = answer(413, "audio_too_long")
    assert type(long) is AudioTooLong and isinstance(long, UploadTooLarge)
    language = answer(422, "unsupported_language")
    assert type(language) is UnsupportedLanguage and isinstance(language, InvalidRequest)
    forbidden = answer(403, "path_not_allowed")
    assert type(forbidden) is Forbidden and forbidden.code == "path_not_allowed"
    key = answer(401, "unauthorized", "a valid API key is required")
    assert type(key) is Unauthorized and key.status == 401
    assert key.message.startswith("a valid API key is required") and "POLYASR_API_KEY" in key.message
    assert set(HTTP_CODES) == {
        "audio_too_long",
        "unsupported_language",
        "model_unavailable",
        "model_busy",
        "decode_timeout",
        "server_busy",
        "server_shutting_down",
    }


def test_an_http_error_without_a_json_body_keeps_its_text() -> None:
    error = error_from_response(500, {}, "Internal Server Error")
    assert isinstance(error, InternalError) and error.message == "Internal Server Error"
    assert error_from_response(503, {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, "").retry_after is None


# -- WAV for the fallback --------------------------------------------------


def test_wav_wraps_pcm16_mono_16k_unchanged() -> None:
    pcm = bytes(range(200))
    with wave.open(io.BytesIO(wav_from_pcm16(pcm))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.readframes(wav.getnframes()) == pcm


# -- HTTP calls ------------------------------------------------------------


def _form(request: httpx.Request) -> dict[str, Message]:
    """The multipart parts of a recorded request, by field name."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=email_policy).parsebytes(head + request.content)
    return {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}


class Recorder:
    """A mock transport that answers every request with ``response``."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response

    def client(self) -> PolyAsrClient:
        return PolyAsrClient("http://asr.test:8766", transport=httpx.MockTransport(self))


async def test_transcribe_sends_the_form_and_reports_upload_progress() -> None:
    body = {"text": "hello", "language": "English", "duration": 2.5}
    recorder = Recorder(httpx.Response(200, json=body))
    audio = bytes(200_000)
    progress: list[tuple[int, int]] = []
    async with recorder.client() as client:
        result = await client.transcribe(
            audio,
            filename="memo.m4a",
            language="en",
            context="Zhang Wei",
            response_format="verbose_json",
            on_progress=lambda sent, total: progress.append((sent, total)),
        )
    assert (result.text, result.language, result.duration, result.raw) == ("hello", "English", 2.5, body)
    request = recorder.requests[0]
    assert request.method == "POST" and request.url.path == "/v1/audio/transcriptions"
    form = _form(request)
    assert form["file"].get_filename() == "memo.m4a" and form["file"].get_payload(decode=True) == audio
    assert {name: form[name].get_content() for name in ("language", "context", "response_format")} == {
        "language": "en",
        "context": "Zhang Wei",
        "response_format": "verbose_json",
    }
    total = len(request.content)
    assert len(progress) > 1 and all(t == total for _, t in progress)
    assert [sent for sent, _ in progress] == sorted({sent for sent, _ in progress})
    assert progress[-1][0] == total


async def test_transcribe_asks_for_logprobs_and_reads_them() -> None:
    body = {
        "text": "hé",
        "logprobs": [
            {"token": "h", "logprob": -0.25, "bytes": [104]},
            {"token": "\ufffd", "logprob": -1.5, "bytes": [195.0, 169.0]},
        ],
    }
    recorder = Recorder(httpx.Response(200, json=body))
    async with recorder.client() as client:
        result = await client.transcribe(b"RIFF", include=["logprobs"])
        await client.transcribe(b"RIFF")
    assert _form(recorder.requests[0])["include[]"].get_content() == "logprobs"
    assert result.logprobs == (TokenLogprob("h", -0.25, (104,)), TokenLogprob("\ufffd", -1.5, (195, 169)))
    assert "include[]" not in _form(recorder.requests[1])  # only when asked


async def test_transcribe_text_format_returns_the_plain_body() -> None:
    recorder = Recorder(httpx.Response(200, text="plain words"))
    async with recorder.client() as client:
        result = await client.transcribe(b"RIFF", response_format="text")
        subtitles = await client.transcribe(b"RIFF", response_format="srt")
    assert result.text == "plain words" and result.raw is None
    assert subtitles.text == "plain words"  # srt and vtt are plain text too
    assert "language" not in _form(recorder.requests[0])  # unset fields are left to the server


async def test_align_sends_file_text_and_language() -> None:
    body = {
        "text": "hi there",
        "language": "English",
        "segments": [
            {
                "text": "hi there",
                "start": 0.0,
                "end": 0.9,
                "words": [
                    {"text": "hi", "start": 0.0, "end": 0.3},
                    {"text": "there", "start": 0.4, "end": 0.9},
                ],
            }
        ],
        "model": "asr + aligner",
    }
    recorder = Recorder(httpx.Response(200, json=body))
    async with recorder.client() as client:
        result = await client.align(b"RIFFdata", text="hi there", language="en", max_chunk_seconds=120)
    request = recorder.requests[0]
    assert request.url.path == "/v1/align"
    form = _form(request)
    assert form["file"].get_payload(decode=True) == b"RIFFdata"
    assert (form["text"].get_content(), form["language"].get_content()) == ("hi there", "en")
    assert form["max_chunk_seconds"].get_content() == "120"
    assert result.to_json() == body
    assert [w.text for w in result.segments[0].words] == ["hi", "there"]


async def test_align_manifest_posts_json() -> None:
    body = {"text": "", "language": None, "segments": [], "model": "m"}
    recorder = Recorder(httpx.Response(200, json=body))
    entries = [
        ManifestEntry("/data/a.wav"),
        ManifestEntry("/data/b.wav", offset=12.5, id="b", text="good morning"),
    ]
    async with recorder.client() as client:
        result = await client.align_manifest(entries, language="zh", max_chunk_seconds=90)
    request = recorder.requests[0]
    assert request.url.path == "/v1/align/manifest"
    assert json.loads(request.content) == {
        "manifest": [
            {"path": "/data/a.wav", "offset": 0.0},
            {"path": "/data/b.wav", "offset": 12.5, "id": "b", "text": "good morning"},
        ],
        "language": "zh",
        "max_chunk_seconds": 90,
    }
    assert result.segments == () and result.language is None


async def test_http_errors_raise_typed_errors() -> None:
    body = {"detail": "asr busy", "error": {"message": "asr busy", "code": "model_unavailable"}}
    recorder = Recorder(httpx.Response(503, headers={"Retry-After": "3"}, json=body))
    async with recorder.client() as client:
        with pytest.raises(ModelUnavailable) as caught:
            await client.transcribe(b"RIFF")
    assert (
        caught.value.retry_after == 3.0 and caught.value.status == 503 and caught.value.message == "asr busy"
    )


async def test_health_and_unload_use_their_paths() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ok", "unloaded": []}))
    async with recorder.client() as client:
        health: Any = await client.health()
        unloaded: Any = await client.unload()
    assert health["status"] == "ok" and unloaded["unloaded"] == []
    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("GET", "/health"),
        ("POST", "/model/unload"),
    ]


async def test_the_api_key_goes_as_a_bearer_header(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ok"}))
    transport = httpx.MockTransport(recorder)
    monkeypatch.delenv("POLYASR_API_KEY", raising=False)
    async with PolyAsrClient("http://asr.test:8766", transport=transport) as anonymous:
        await anonymous.health()
    async with PolyAsrClient("http://asr.test:8766", api_key="k-1", transport=transport) as keyed:
        await keyed.health()
    monkeypatch.setenv("POLYASR_API_KEY", "k-env")
    async with PolyAsrClient("http://asr.test:8766", transport=transport) as from_env:
        await from_env.health()
    sent = [r.headers.get("authorization") for r in recorder.requests]
    assert sent == [None, "Bearer k-1", "Bearer k-env"]
