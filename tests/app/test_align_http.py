"""POST /v1/align and /v1/align/manifest against the real engine of this run
(tiny random-weight checkpoints), in process.

Random weights give gibberish text and nonsense times (often far past the end
of the audio), so these tests assert structure, clamping, monotonicity,
offsets, order, which unit did what, and every error status.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from polyasr.core.engine import Transcript
from polyasr.core.languages import ALIGNER_NAMES
from polyasr.models import manager as model_manager
from tests.audio_util import empty_wav, speech, wav_bytes
from tests.conftest import LOOPBACK, SpyEngine

SR = 16_000
VOICE = speech("voice_a")  # 8.2 s, a pause at 3.1-3.5 s
SENTENCES = "Hello world. This is a test!"


def post_align(http: TestClient, audio: np.ndarray | bytes, **form: str) -> Any:
    data = audio if isinstance(audio, bytes) else wav_bytes(audio)
    return http.post("/v1/align", files={"file": ("clip.wav", data)}, data=form)


def all_times(body: dict[str, Any]) -> list[float]:
    """start, end of every word, segment by segment, in response order."""
    return [t for s in body["segments"] for w in s["words"] for t in (w["start"], w["end"])]


def check_schema(body: dict[str, Any], spy: SpyEngine, duration: float) -> None:
    assert set(body) == {"text", "language", "segments", "model"}
    assert body["model"] == f"{spy.model_id} + {spy.aligner_id}"
    assert body["segments"], body
    for segment in body["segments"]:
        assert set(segment) == {"text", "start", "end", "words"}
        assert segment["text"] and segment["text"] == segment["text"].strip()
        assert 0.0 <= segment["start"] <= segment["end"] <= duration + 5e-4  # times are rounded to the ms
        for word in segment["words"]:
            assert set(word) == {"text", "start", "end"}
            assert all(isinstance(word[k], float) for k in ("start", "end"))
            assert word["text"] in segment["text"]
            assert segment["start"] <= word["start"] <= word["end"] <= segment["end"]
    times = all_times(body)
    assert times == sorted(times)


def long_input(clips: int = 6) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``clips`` x (4.9 s of speech + 0.8 s of white noise): the pauses are
    noisy, so only VAD (not the quietest frame) finds them."""
    rng = np.random.default_rng(3)
    voice = speech("voice_b")[: int(4.93 * SR)]
    parts, pause_spans, t = [], [], 0
    for _ in range(clips):
        noise = (rng.standard_normal(int(0.8 * SR)) * 0.01).astype(np.float32)
        parts += [voice, noise]
        pause_spans.append(((t + len(voice)) / SR, (t + len(voice) + len(noise)) / SR))
        t += len(voice) + len(noise)
    return np.concatenate(parts), pause_spans


def in_pause(second: float, pause_spans: list[tuple[float, float]]) -> bool:
    return any(a <= second <= b for a, b in pause_spans)


@pytest.fixture
def http(make_client: Any) -> tuple[TestClient, SpyEngine]:
    return make_client(peer=LOOPBACK, POLYASR_STREAMING_PROBE="0")


# --------------------------------------------------------------------------- #
# /v1/align
# --------------------------------------------------------------------------- #


def test_align_transcribes_with_asr_then_aligns(http: Any) -> None:
    client, spy = http
    response = post_align(client, VOICE, language="en-US")
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, spy, len(VOICE) / SR)
    assert body["language"] == "English"
    assert body["text"] == spy.aligned[0][1]  # what the asr unit heard is what was aligned
    assert [c.language for c in spy.batches[-1]] == ["English"] and spy.aligned[0][2] == "English"
    # Transcription ran on the asr unit's model; the align unit holds only the
    # forced aligner (no second ASR copy) and both stay resident (co-load).
    asr_models = {id(m): m for name, m in spy.calls if name == "transcribe"}
    align_models = {id(m): m for name, m in spy.calls if name == "align"}
    assert len(asr_models) == len(align_models) == 1 and asr_models.keys() != align_models.keys()
    assert not hasattr(next(iter(align_models.values())), "transcribe")
    assert client.get("/health").json()["manager"]["resident"] == ["align", "asr"]


def test_aligner_times_are_clamped_to_the_audio(http: Any) -> None:
    client, spy = http
    raw: list[Any] = []
    real_align = spy.align
    spy.align = lambda *args: raw.append(real_align(*args)) or raw[-1]
    body = post_align(client, VOICE[: 3 * SR], language="zh", text="大家好，今天我们来学习。").json()
    assert max(u.end for u in raw[0]) > 3.0  # the tiny aligner answers minutes for a 3 s clip
    check_schema(body, spy, 3.0)
    assert max(all_times(body)) <= 3.0


def test_text_field_aligns_that_transcript_without_asr(http: Any) -> None:
    client, spy = http
    response = post_align(client, VOICE, text=f"  {SENTENCES} ", language="English")
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, spy, len(VOICE) / SR)
    assert not spy.batches  # no ASR pass
    assert spy.aligned[-1][1:] == (SENTENCES, "English")
    assert body["text"] == SENTENCES and body["language"] == "English"
    assert [s["text"] for s in body["segments"]] == ["Hello world.", "This is a test!"]
    assert [w["text"] for s in body["segments"] for w in s["words"]] == SENTENCES.replace(".", "").replace(
        "!", ""
    ).split()


@pytest.mark.parametrize(
    ("text", "aligner_gets"),
    [
        ("こんにちは、世界。", "Japanese"),
        ("大家好。", "Chinese"),
        ("안녕하세요.", "Korean"),
        ("Hi there.", "English"),
    ],
)
def test_text_without_language_picks_the_splitter_by_script(http: Any, text: str, aligner_gets: str) -> None:
    client, spy = http
    body = post_align(client, VOICE[: 2 * SR], text=text).json()
    assert spy.aligned[-1][2] == aligner_gets
    assert body["language"] is None and body["text"] == text  # nobody named or detected one
    assert [s["text"] for s in body["segments"]] == [text]


def test_long_input_is_cut_at_pauses_and_offsets_are_absolute(http: Any) -> None:
    client, spy = http
    audio, pause_spans = long_input()
    total = len(audio) / SR
    assert not any(in_pause(7.0 * k, pause_spans) for k in range(1, 4))  # hard cuts would split speech
    words = [f"w{i}" for i in range(60)]
    response = post_align(client, audio, text=" ".join(words), max_chunk_seconds="7", language="en")
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, spy, total)

    chunks = [clip for clip, _, _ in spy.aligned]
    lengths = [len(c.samples) for c in chunks]
    assert len(chunks) >= 5 and sum(lengths) == len(audio)
    assert all(n <= 7 * SR for n in lengths)
    edges = np.cumsum([0, *lengths]) / SR
    assert all(in_pause(cut, pause_spans) for cut in edges[1:-1]), edges
    # Each chunk's words carry that chunk's offset and stay inside it.
    assert body["text"] == " ".join(words)
    timed = [w for s in body["segments"] for w in s["words"]]
    assert [w["text"] for w in timed] == words
    position = 0
    for k, (_, text, _) in enumerate(spy.aligned):
        for word in timed[position : position + len(text.split())]:
            assert edges[k] - 1e-3 <= word["start"] <= word["end"] <= edges[k + 1] + 1e-3
        position += len(text.split())


def test_chunk_transcripts_are_joined_with_the_cjk_rule(http: Any) -> None:
    client, spy = http
    audio, _ = long_input(3)
    for pieces, joined in (
        (["你好", "世界", "再见"], "你好世界再见"),
        (["hello", "big", "world"], "hello big world"),
    ):
        script = iter(pieces)
        spy.transcribe = lambda model, clips, should_stop=None, script=script: [
            Transcript(next(script, "extra"), "Chinese") for _ in clips
        ]
        body = post_align(client, audio, max_chunk_seconds="7").json()
        assert body["text"] == joined and body["language"] == "Chinese"
        assert [s["text"] for s in body["segments"]] == pieces  # one sentence per chunk here


def test_detected_language_outside_the_aligner_is_422_naming_it(http: Any) -> None:
    client, spy = http
    spy.transcribe = lambda model, clips, should_stop=None: [Transcript("مرحبا", "Arabic") for _ in clips]
    response = post_align(client, VOICE)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "detected language 'Arabic'" in detail and ", ".join(ALIGNER_NAMES) in detail
    assert not spy.aligned


def test_align_errors_then_success(make_client: Any) -> None:
    client, _ = make_client(POLYASR_STREAMING_PROBE="0")
    good = VOICE[:SR]
    cases = [
        (post_align(client, b"not audio at all" * 50), 400, "not an audio file"),
        (post_align(client, empty_wav()), 400, "empty"),
        (post_align(client, good, language="ar"), 422, "Cantonese, Chinese, English, French"),
        (post_align(client, good, language="klingon"), 422, "unsupported language"),
        (post_align(client, good, max_chunk_seconds="0"), 422, None),
        (post_align(client, good, max_chunk_seconds="301"), 422, None),
        (post_align(client, good, max_chunk_seconds="abc"), 422, None),
        (client.post("/v1/align", data={"language": "en"}), 422, None),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, response.text
        if needle:
            assert needle in response.json()["detail"]
        assert post_align(client, good, language="en").status_code == 200  # still serving


def test_align_upload_limit_413(make_client: Any) -> None:
    client, _ = make_client(POLYASR_MAX_UPLOAD_MB="0.05", POLYASR_STREAMING_PROBE="0")
    response = post_align(client, np.tile(VOICE, 2))
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert post_align(client, VOICE[: SR // 2], language="en").status_code == 200


@pytest.mark.parametrize("aligner", ["missing", "asr-checkpoint"])
def test_aligner_that_cannot_load_is_503(make_client: Any, tiny: Any, tmp_path: Path, aligner: str) -> None:
    path = tmp_path / "gone" if aligner == "missing" else tiny.asr
    client, _ = make_client(POLYASR_ALIGNER_MODEL=str(path), POLYASR_STREAMING_PROBE="0")
    response = post_align(client, VOICE[:SR], text="hello", language="en")
    assert response.status_code == 503, response.text
    assert "align model unavailable" in response.json()["detail"]
    ok = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(VOICE[:SR]))})
    assert ok.status_code == 200


def test_no_temporary_files_left_behind(http: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = http
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    big = np.tile(VOICE, 2)  # > 1 MB: the upload spools to disk
    assert post_align(client, big, text="hi", language="en").status_code == 200
    assert (
        post_align(client, wav_bytes(big)[:-1000] + b"\xff" * 5000, max_chunk_seconds="0").status_code == 422
    )
    assert post_align(client, b"\x00" * 2_000_000).status_code == 400
    assert list(scratch.iterdir()) == []


# --------------------------------------------------------------------------- #
# /v1/align/manifest
# --------------------------------------------------------------------------- #


@pytest.fixture
def audio_files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    files = {
        "a": (folder / "a.wav", wav_bytes(VOICE[: 3 * SR])),
        "b": (folder / "b.wav", wav_bytes(speech("voice_b")[: 2 * SR])),
        "bad": (folder / "bad.wav", b"not audio" * 100),
        "empty": (folder / "empty.wav", empty_wav()),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()}


def manifest(*entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"manifest": list(entries), **extra}


def test_manifest_offsets_order_and_schema(http: Any, audio_files: dict[str, Path]) -> None:
    client, spy = http
    body_json = manifest(
        {"path": str(audio_files["a"]), "offset": 0.0, "id": "el_1", "text": "First one. Second one."},
        {"path": str(audio_files["b"]), "offset": 100.5, "id": "el_2", "text": "第三句。"},
        {"path": str(audio_files["a"]), "offset": 200},
        language="en",
        model="ignored",
    )
    response = client.post("/v1/align/manifest", json=body_json)
    assert response.status_code == 200, response.text
    body = response.json()
    check_schema(body, spy, 203.0)
    texts = [s["text"] for s in body["segments"]]
    assert texts[:3] == ["First one.", "Second one.", "第三句。"] and len(texts) >= 4
    assert body["text"].startswith("First one. Second one. 第三句。")
    assert body["language"] == "English"
    spans = [(s["start"], s["end"]) for s in body["segments"]]
    assert all(0.0 <= a <= b <= 3.0 for a, b in spans[:2])
    assert 100.5 <= spans[2][0] <= spans[2][1] <= 102.5
    assert all(200.0 <= a <= b <= 203.0 for a, b in spans[3:])
    assert len(spy.batches) == 1  # only the entry without text was transcribed


def test_manifest_runs_the_whole_asr_pass_before_any_alignment(
    make_client: Any, audio_files: dict[str, Path]
) -> None:
    client, spy = make_client(peer=LOOPBACK, POLYASR_COLOAD="0", POLYASR_STREAMING_PROBE="0")
    before = client.get("/health").json()["manager"]["unit_state"]
    entries = [{"path": str(audio_files[k]), "offset": i * 10.0} for i, k in enumerate(["a", "b", "a"])]
    response = client.post("/v1/align/manifest", json=manifest(*entries, language="en", max_chunk_seconds=1))
    assert response.status_code == 200, response.text
    order = [name for name, _ in spy.calls]
    assert sum(len(b) for b in spy.batches) >= 6 and order.count("align") >= 6  # several chunks per entry
    assert order == sorted(order, key=lambda name: name == "align")  # every transcribe first
    after = client.get("/health").json()["manager"]["unit_state"]
    assert after["asr"]["evictions"] - before["asr"]["evictions"] == 1  # one swap
    assert after["align"]["loads"] - before["align"]["loads"] == 1
    assert after["asr"]["resident"] is False and after["align"]["resident"] is True


def test_live_asr_lease_makes_align_wait_then_503_instead_of_evicting(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_manager, "BUSY_WAIT_SEC", 0.3)
    client, spy = make_client(POLYASR_COLOAD="0", POLYASR_STREAMING_PROBE="0")
    manager = client.app.state.services.manager  # type: ignore[attr-defined]
    holding, release = threading.Event(), threading.Event()

    async def dictation() -> None:  # a live session holds the asr unit
        async with manager.lease("asr"):
            holding.set()
            while not release.is_set():
                await asyncio.sleep(0.02)

    assert client.portal is not None
    session = client.portal.start_task_soon(dictation)
    assert holding.wait(10)
    response = post_align(client, VOICE[:SR], text="hello", language="en")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "only one model may be resident" in response.json()["detail"]
    assert manager.is_resident("asr") and not spy.aligned
    release.set()
    session.result(10)
    assert post_align(client, VOICE[:SR], text="hello", language="en").status_code == 200


def test_manifest_errors_then_success(http: Any, audio_files: dict[str, Path]) -> None:
    client, spy = http
    a, missing = str(audio_files["a"]), str(audio_files["a"].parent / "nope.wav")
    good = manifest({"path": a}, language="en")
    cases: list[tuple[Any, int, str | None]] = [
        ([{"path": a}], 422, None),  # body is not an object
        ({}, 400, "manifest must be a non-empty array"),
        (manifest(), 400, "manifest must be a non-empty array"),
        ({"manifest": {"path": a}}, 400, "manifest must be a non-empty array"),
        (manifest({"path": a}, {"offset": 1}), 400, "manifest entry 1 missing 'path'"),
        (
            manifest({"path": a}, {"path": missing, "id": "el_2"}),
            400,
            f"manifest entry el_2 path not found: {missing}",
        ),
        (manifest({"path": "rel/a.wav"}), 400, "must be absolute"),
        (manifest({"path": str(audio_files["bad"]), "id": "x"}), 400, "manifest entry x: not an audio file"),
        (manifest({"path": str(audio_files["empty"])}), 400, "manifest entry 0: audio is empty"),
        (
            manifest({"path": a, "offset": "abc", "id": "e"}),
            422,
            "manifest entry e: 'offset' must be a number",
        ),
        (manifest({"path": a}, max_chunk_seconds=0), 422, None),
        (manifest({"path": a}, max_chunk_seconds=-5), 422, None),
        (manifest({"path": a}, max_chunk_seconds="abc"), 422, None),
        (manifest({"path": a}, max_chunk_seconds=301), 422, None),
        (manifest({"path": a}, language="Thai"), 422, "not supported by the forced aligner"),
    ]
    for body, status, needle in cases:
        response = client.post("/v1/align/manifest", json=body)
        assert response.status_code == status, (body, response.text)
        if needle:
            assert needle in response.json()["detail"]
    assert not spy.calls  # every one was refused before any model work
    assert client.post("/v1/align/manifest", json=good).status_code == 200


def test_manifest_entry_failure_is_500_naming_it(http: Any, audio_files: dict[str, Path]) -> None:
    client, spy = http
    real_align = spy.align

    def flaky(model: Any, clip: Any, text: str, language: str) -> Any:
        if text == "boom":
            raise RuntimeError("aligner exploded")
        return real_align(model, clip, text, language)

    spy.align = flaky
    entries = [
        {"path": str(audio_files["a"]), "text": "fine"},
        {"path": str(audio_files["b"]), "id": "el_2", "text": "boom"},
    ]
    response = client.post("/v1/align/manifest", json=manifest(*entries))
    assert response.status_code == 500
    detail = response.json()["detail"]
    # The entry is named; the exception's text stays in the log, under the id the body gives.
    prefix = f"align failed for manifest entry el_2 ({audio_files['b']}) (error id "
    assert detail.startswith(prefix) and "exploded" not in detail
    assert response.json()["error"]["code"] == "align_failed"
    assert client.post("/v1/align/manifest", json=manifest(entries[0])).status_code == 200


def test_remote_clients_get_403_unless_roots_allow(make_client: Any, audio_files: dict[str, Path]) -> None:
    remote = ("10.1.2.3", 5000)
    a, missing = str(audio_files["a"]), str(audio_files["a"].parent / "nope.wav")
    client, spy = make_client(peer=remote, POLYASR_STREAMING_PROBE="0")
    for path in (a, missing, "/etc/passwd"):  # same answer whether or not the file exists
        response = client.post("/v1/align/manifest", json=manifest({"path": path}))
        assert response.status_code == 403 and "loopback" in response.json()["detail"]
    assert not spy.calls
    assert post_align(client, VOICE[:SR], text="hi", language="en").status_code == 200  # uploads are fine

    roots = str(audio_files["a"].parent)
    client, _ = make_client(peer=remote, POLYASR_MANIFEST_ROOTS=roots, POLYASR_STREAMING_PROBE="0")
    assert client.post("/v1/align/manifest", json=manifest({"path": a, "text": "hi"})).status_code == 200
    for path in ("/etc/passwd", f"{roots}/../../etc/passwd", "/nope/x.wav"):
        assert client.post("/v1/align/manifest", json=manifest({"path": path})).status_code == 403
    response = client.post("/v1/align/manifest", json=manifest({"path": missing}))
    assert response.status_code == 400  # inside the roots, existence may be told

    loopback, _ = make_client(peer=LOOPBACK, POLYASR_MANIFEST_ROOTS=roots, POLYASR_STREAMING_PROBE="0")
    assert loopback.post("/v1/align/manifest", json=manifest({"path": "/etc/passwd"})).status_code == 403
