"""The WebSocket session archive (contract §9): layout, event lines, FLAC at close, best effort."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from polyasr_wslog import WsSessionLog
from tests.audio_util import speech


def pcm_of(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def session_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sessions").glob("*/*") if p.is_dir())


def read_events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]


async def test_layout_events_and_flac(tmp_path: Path) -> None:
    pcm = pcm_of(speech("voice_a")[: 16000 * 2])
    log = WsSessionLog(tmp_path, "cuda", "Qwen/Qwen3-ASR-0.6B")
    log.event("protocol_started", session_id="client-1", resume=False, ack_seq=0, context_len=0)
    for start in range(0, len(pcm), 3200):
        await log.audio(pcm[start : start + 3200])
    log.event("final", text="héllo 你好")
    log.close()

    [folder] = session_dirs(tmp_path)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", folder.parent.name)
    assert re.fullmatch(r"\d{6}-ws-[0-9a-f]{8}", folder.name)
    assert folder == log.path
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "input.flac"]

    events = read_events(folder)
    assert all(isinstance(e["t_ms"], int) and e["t_ms"] >= 0 for e in events)
    assert [e["type"] for e in events] == ["start", "protocol_started", "final", "close"]
    assert events[0] == {
        "t_ms": events[0]["t_ms"],
        "type": "start",
        "session_id": log.session_id,
        "kind": "ws",
        "model": "Qwen/Qwen3-ASR-0.6B",
        "backend": "cuda",
    }
    assert log.session_id != "client-1" and folder.name.endswith(log.session_id)
    assert events[2]["text"] == "héllo 你好"
    assert "你好" in (folder / "events.jsonl").read_text(encoding="utf-8")
    assert events[-1]["audio_bytes"] == len(pcm)
    assert events[-1]["duration_ms"] == 2000

    info = sf.info(folder / "input.flac")
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "FLAC")
    decoded, _ = sf.read(folder / "input.flac", dtype="int16")
    np.testing.assert_array_equal(decoded, np.frombuffer(pcm, dtype="<i2"))


async def test_pcm_holds_all_audio_before_close(tmp_path: Path) -> None:
    """A crash before close leaves every frame and event on disk."""
    pcm = pcm_of(speech("voice_a")[:8000])
    log = WsSessionLog(tmp_path, "mlx", "m")
    await log.audio(pcm[:5000])
    await log.audio(pcm[5000:])
    log.event("partial", text="hi", audio_sec=0.5)
    [folder] = session_dirs(tmp_path)
    assert (folder / "input.pcm").read_bytes() == pcm
    assert [e["type"] for e in read_events(folder)] == ["start", "partial"]
    log.close()


async def test_close_is_last_and_idempotent(tmp_path: Path) -> None:
    log = WsSessionLog(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 16)
    log.close()
    log.close()
    log.event("late", x=1)
    await log.audio(b"\x00\x00")
    [folder] = session_dirs(tmp_path)
    events = read_events(folder)
    assert [e["type"] for e in events] == ["start", "close"]
    assert events[-1]["audio_bytes"] == 32
    assert not (folder / "input.pcm").exists()


def test_numpy_fields_are_numbers(tmp_path: Path) -> None:
    log = WsSessionLog(tmp_path, "mlx", "m")
    log.event("chunk_accepted", chunk_sec=np.float32(1.5), speaker_sim=None, gated_sec=np.int64(2))
    log.close()
    accepted = read_events(session_dirs(tmp_path)[0])[1]
    assert accepted["chunk_sec"] == 1.5 and accepted["gated_sec"] == 2 and accepted["speaker_sim"] is None


def test_session_without_audio_keeps_no_pcm(tmp_path: Path) -> None:
    log = WsSessionLog(tmp_path, "mlx", "m")
    log.event("protocol_error", reason="stop_before_start")
    (log.path / "input.pcm").write_bytes(b"")
    log.close()
    assert sorted(p.name for p in log.path.iterdir()) == ["events.jsonl"]


async def test_unwritable_flac_keeps_pcm(tmp_path: Path) -> None:
    log = WsSessionLog(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 100)
    (log.path / "input.flac").mkdir()  # something FLAC cannot be written over
    log.close()
    assert (log.path / "input.pcm").read_bytes() == b"\x01\x00" * 100
    assert read_events(log.path)[-1]["type"] == "close"


async def test_encoder_failure_keeps_pcm_and_no_partial_flac(tmp_path: Path, monkeypatch) -> None:
    def broken_write(self, data) -> None:
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(sf.SoundFile, "write", broken_write)
    log = WsSessionLog(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 100)
    log.close()
    assert sorted(p.name for p in log.path.iterdir()) == ["events.jsonl", "input.pcm"]


async def test_disabled_without_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = WsSessionLog(None, "mlx", "m")
    log.event("start_again")
    await log.audio(b"\x00\x00" * 10)
    log.close()
    assert log.path is None
    assert list(tmp_path.iterdir()) == []


async def test_blocked_root_never_raises(tmp_path: Path) -> None:
    (tmp_path / "sessions").write_text("a file where the folder should be")
    log = WsSessionLog(tmp_path, "mlx", "m")
    log.event("protocol_started", session_id="c", resume=False, ack_seq=0, context_len=0)
    await log.audio(b"\x00\x00" * 10)
    log.close()
    assert log.path is None
    assert (tmp_path / "sessions").is_file()
