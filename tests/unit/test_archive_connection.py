"""The dictation-connection archive: layout, event lines, a folder
complete once its ``close`` line is there, writes off the event loop and in
order, best effort."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from polyasr.archive.connection import ConnectionArchive
from tests.audio_util import speech


def pcm_of(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def session_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sessions").glob("*/*") if p.is_dir())


def read_events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]


async def test_layout_events_and_flac(tmp_path: Path) -> None:
    pcm = pcm_of(speech("voice_a")[: 16000 * 2])
    log = ConnectionArchive(tmp_path, "cuda", "Qwen/Qwen3-ASR-0.6B")
    log.event("protocol_started", session_id="client-1", resume=False, ack_seq=0, context_len=0)
    for start in range(0, len(pcm), 3200):
        await log.audio(pcm[start : start + 3200])
    log.event("final", text="héllo 你好")
    await asyncio.to_thread(log.close)

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
    assert events[-1] == {
        "t_ms": events[-1]["t_ms"],
        "type": "close",
        "audio_bytes": len(pcm),
        "duration_ms": 2000,
        "audio_file": "input.flac",
    }

    info = sf.info(folder / "input.flac")
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "FLAC")
    decoded, _ = sf.read(folder / "input.flac", dtype="int16")
    np.testing.assert_array_equal(decoded, np.frombuffer(pcm, dtype="<i2"))


async def test_close_line_only_once_the_folder_is_complete(tmp_path: Path, monkeypatch) -> None:
    """Whoever sees ``close`` sees the final FLAC and no PCM; while the FLAC is
    being encoded, nothing called ``input.flac`` exists."""
    seen: dict[str, list[str]] = {}
    encode = sf.SoundFile.write
    write_close = ConnectionArchive._write_close

    def watched_encode(self, data) -> None:
        seen.setdefault("encoding", sorted(p.name for p in log.path.iterdir()))
        encode(self, data)

    def watched_close(self, t_ms, fields) -> None:
        seen["close"] = sorted(p.name for p in self.path.iterdir())
        seen["flac_at_close"] = [str(len(sf.read(self.path / "input.flac", dtype="int16")[0]))]
        write_close(self, t_ms, fields)

    monkeypatch.setattr(sf.SoundFile, "write", watched_encode)
    monkeypatch.setattr(ConnectionArchive, "_write_close", watched_close)
    log = ConnectionArchive(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 4000)
    log.close()
    assert "input.flac" not in seen["encoding"] and "input.pcm" in seen["encoding"]
    assert seen["close"] == ["events.jsonl", "input.flac"]
    assert seen["flac_at_close"] == ["4000"]
    assert read_events(log.path)[-1]["type"] == "close"


async def test_pcm_holds_every_written_frame_before_close(tmp_path: Path) -> None:
    """``audio`` resolves only once the frame is in ``input.pcm``, and the
    events logged before it are on disk too: a crash loses nothing acknowledged."""
    pcm = pcm_of(speech("voice_a")[:8000])
    log = ConnectionArchive(tmp_path, "mlx", "m")
    log.event("partial", text="x" * 100_000, audio_sec=0.5)  # a big line, queued first
    await log.audio(pcm[:5000])
    assert (log.path / "input.pcm").read_bytes() == pcm[:5000]
    assert [e["type"] for e in read_events(log.path)] == ["start", "partial"]
    await log.audio(pcm[5000:])
    assert (log.path / "input.pcm").read_bytes() == pcm
    log.close()


async def test_writes_leave_the_event_loop(tmp_path: Path, monkeypatch) -> None:
    """A slow disk delays the frame's ack, not the event loop: other tasks keep
    running, and ``event`` returns at once while the writer is busy."""
    write_audio = ConnectionArchive._write_audio

    def slow_write(self, t_ms, pcm) -> None:
        time.sleep(0.5)
        write_audio(self, t_ms, pcm)

    monkeypatch.setattr(ConnectionArchive, "_write_audio", slow_write)
    log = ConnectionArchive(tmp_path, "mlx", "m")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.get_running_loop().create_task(ticker())
    writing = asyncio.get_running_loop().create_task(log.audio(b"\x02\x00" * 100))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    log.event("partial", text="while the disk is busy", audio_sec=0.1)
    assert time.monotonic() - began < 0.1
    assert not writing.done()
    await writing
    task.cancel()
    assert ticks >= 10  # the loop ran all along (0.5 s of 10 ms ticks is ~50)
    assert (log.path / "input.pcm").read_bytes() == b"\x02\x00" * 100
    log.close()
    assert [e["type"] for e in read_events(log.path)] == ["start", "partial", "close"]


async def test_a_cancelled_audio_call_still_archives_its_frame(tmp_path: Path) -> None:
    """The session accepted the frame: it is archived even if the connection dies before its ack."""
    log = ConnectionArchive(tmp_path, "mlx", "m")
    writing = asyncio.get_running_loop().create_task(log.audio(b"\x03\x00" * 50))
    await asyncio.sleep(0)
    writing.cancel()
    await asyncio.to_thread(log.close)
    assert read_events(log.path)[-1]["audio_bytes"] == 100
    assert len(sf.read(log.path / "input.flac")[0]) == 50


def test_events_from_many_threads_are_whole_lines(tmp_path: Path) -> None:
    """Decode workers log from their own threads."""
    log = ConnectionArchive(tmp_path, "mlx", "m")

    def worker(n: int) -> None:
        for i in range(200):
            log.event("partial", text=f"{n}-{i}-" + "é" * 50, audio_sec=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    events = read_events(log.path)
    assert len(events) == 2 + 800
    for n in range(4):  # each thread's events in the order it logged them
        mine = [e["audio_sec"] for e in events if e.get("text", "").startswith(f"{n}-")]
        assert mine == list(range(200))


async def test_close_is_last_and_idempotent(tmp_path: Path) -> None:
    log = ConnectionArchive(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 16)
    closers = [threading.Thread(target=log.close) for _ in range(2)]
    for t in closers:
        t.start()
    log.close()
    for t in closers:
        t.join()
    log.event("late", x=1)
    await log.audio(b"\x00\x00")
    [folder] = session_dirs(tmp_path)
    events = read_events(folder)
    assert [e["type"] for e in events] == ["start", "close"]
    assert events[-1]["audio_bytes"] == 32
    assert not (folder / "input.pcm").exists()


def test_numpy_fields_are_numbers(tmp_path: Path) -> None:
    log = ConnectionArchive(tmp_path, "mlx", "m")
    log.event("chunk_accepted", chunk_sec=np.float32(1.5), speaker_sim=None, gated_sec=np.int64(2))
    log.close()
    accepted = read_events(session_dirs(tmp_path)[0])[1]
    assert accepted["chunk_sec"] == 1.5 and accepted["gated_sec"] == 2 and accepted["speaker_sim"] is None


def test_connection_without_audio_has_no_audio_file(tmp_path: Path) -> None:
    log = ConnectionArchive(tmp_path, "mlx", "m")
    log.event("protocol_error", reason="stop_before_start")
    log.close()
    assert sorted(p.name for p in log.path.iterdir()) == ["events.jsonl"]
    close = read_events(log.path)[-1]
    assert close["type"] == "close" and close["audio_bytes"] == 0 and close["audio_file"] is None


async def test_unwritable_flac_keeps_pcm_and_says_so(tmp_path: Path) -> None:
    log = ConnectionArchive(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 100)
    (log.path / "input.flac.partial").mkdir()  # something the encoder cannot write over
    log.close()
    assert (log.path / "input.pcm").read_bytes() == b"\x01\x00" * 100
    close = read_events(log.path)[-1]
    assert close["type"] == "close" and close["audio_file"] == "input.pcm"
    assert close["audio_bytes"] == 200 and close["flac_error"]


async def test_encoder_failure_keeps_pcm_and_no_flac(tmp_path: Path, monkeypatch) -> None:
    def broken_write(self, data) -> None:
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(sf.SoundFile, "write", broken_write)
    log = ConnectionArchive(tmp_path, "mlx", "m")
    await log.audio(b"\x01\x00" * 100)
    log.close()
    assert sorted(p.name for p in log.path.iterdir()) == ["events.jsonl", "input.pcm"]
    close = read_events(log.path)[-1]
    assert close["audio_file"] == "input.pcm" and "encoder failed" in close["flac_error"]


async def test_disabled_without_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = ConnectionArchive(None, "mlx", "m")
    log.event("start_again")
    await log.audio(b"\x00\x00" * 10)
    log.close()
    assert log.path is None
    assert list(tmp_path.iterdir()) == []


async def test_blocked_root_never_raises(tmp_path: Path) -> None:
    (tmp_path / "sessions").write_text("a file where the folder should be")
    log = ConnectionArchive(tmp_path, "mlx", "m")
    log.event("protocol_started", session_id="c", resume=False, ack_seq=0, context_len=0)
    await log.audio(b"\x00\x00" * 10)
    log.close()
    assert (tmp_path / "sessions").is_file()
    assert list(tmp_path.iterdir()) == [tmp_path / "sessions"]
