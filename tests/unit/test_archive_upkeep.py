"""What the archives do on their own: complete the folders a killed process
left open (recovery) and delete the oldest items past an age or size limit
(retention), never touching an open connection or anything outside the date
folders of ``http/`` and ``sessions/``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from polyasr.archive.archives import Archives
from polyasr.archive.connection import ConnectionArchive
from polyasr.archive.recovery import recover
from polyasr.archive.retention import prune
from polyasr.core.config import load_settings

DAY = 86400.0


def read_events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]


def killed_folder(root: Path, name: str = "101010-ws-0000abcd", day: str = "2026-01-02") -> Path:
    """A folder as a killed process leaves it: events without ``close``, audio as PCM."""
    folder = root / "sessions" / day / name
    folder.mkdir(parents=True)
    lines = [
        {"t_ms": 0, "type": "start", "session_id": name[-8:], "kind": "ws", "model": "m", "backend": "mlx"},
        {"t_ms": 1200, "type": "protocol_started", "session_id": "c", "resume": False},
    ]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return folder


PCM = np.arange(-3000, 3000, 3, dtype="<i2").tobytes()  # 2000 distinct samples


def test_recovery_converts_and_closes(tmp_path: Path) -> None:
    folder = killed_folder(tmp_path)
    (folder / "input.pcm").write_bytes(PCM)
    assert recover(tmp_path) == [folder]
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "input.flac"]
    close = read_events(folder)[-1]
    assert close == {
        "t_ms": 1200,
        "type": "close",
        "audio_bytes": len(PCM),
        "duration_ms": len(PCM) // 32,
        "audio_file": "input.flac",
        "recovered": True,
    }
    np.testing.assert_array_equal(sf.read(folder / "input.flac", dtype="int16")[0], np.frombuffer(PCM, "<i2"))
    assert recover(tmp_path) == []  # complete now: left alone
    assert len(read_events(folder)) == 3


def test_recovery_cuts_a_torn_last_line(tmp_path: Path) -> None:
    folder = killed_folder(tmp_path)
    with open(folder / "events.jsonl", "a") as f:
        f.write('{"t_ms": 1300, "type": "par')
    (folder / "input.pcm").write_bytes(PCM)
    recover(tmp_path)
    assert [e["type"] for e in read_events(folder)] == ["start", "protocol_started", "close"]


def test_recovery_past_long_lines(tmp_path: Path) -> None:
    """A last line longer than the tail read (a long final), whole or torn."""
    whole = killed_folder(tmp_path, "101010-ws-00000001")
    with open(whole / "events.jsonl", "a") as f:
        f.write(json.dumps({"t_ms": 5, "type": "final", "text": "w" * 300_000}) + "\n")
    torn = killed_folder(tmp_path, "101010-ws-00000002")
    with open(torn / "events.jsonl", "a") as f:
        f.write('{"t_ms": 5, "type": "final", "text": "' + "w" * 300_000)
    assert recover(tmp_path) == [whole, torn]
    assert [e["type"] for e in read_events(whole)] == ["start", "protocol_started", "final", "close"]
    assert [e["type"] for e in read_events(torn)] == ["start", "protocol_started", "close"]
    assert recover(tmp_path) == []


def test_recovery_after_a_kill_during_close(tmp_path: Path) -> None:
    """Killed mid-encoding (a partial FLAC) or between the rename and the PCM's
    removal: the PCM is the truth and is converted again."""
    mid_encoding = killed_folder(tmp_path, "101010-ws-00000001")
    (mid_encoding / "input.pcm").write_bytes(PCM)
    (mid_encoding / "input.flac.partial").write_bytes(b"fLaC-torn")
    after_rename = killed_folder(tmp_path, "101010-ws-00000002")
    (after_rename / "input.pcm").write_bytes(PCM)
    sf.write(after_rename / "input.flac", np.frombuffer(PCM, "<i2")[:10], 16000, subtype="PCM_16")
    before_close_line = killed_folder(tmp_path, "101010-ws-00000003")
    sf.write(before_close_line / "input.flac", np.frombuffer(PCM, "<i2"), 16000, subtype="PCM_16")

    assert recover(tmp_path) == [mid_encoding, after_rename, before_close_line]
    for folder in (mid_encoding, after_rename, before_close_line):
        assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "input.flac"]
        assert len(sf.read(folder / "input.flac", dtype="int16")[0]) == len(PCM) // 2
        close = read_events(folder)[-1]
        assert close["recovered"] is True and close["audio_bytes"] == len(PCM)


def test_recovery_of_a_folder_without_audio(tmp_path: Path) -> None:
    empty_pcm = killed_folder(tmp_path, "101010-ws-00000001")
    (empty_pcm / "input.pcm").write_bytes(b"")
    no_audio = killed_folder(tmp_path, "101010-ws-00000002")
    recover(tmp_path)
    for folder in (empty_pcm, no_audio):
        assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl"]
        close = read_events(folder)[-1]
        assert close["audio_file"] is None and close["audio_bytes"] == 0 and close["recovered"] is True


def test_recovery_leaves_open_connections_alone(tmp_path: Path) -> None:
    folder = killed_folder(tmp_path)
    (folder / "input.pcm").write_bytes(PCM)
    assert recover(tmp_path, is_open=lambda path: path == folder) == []
    assert (folder / "input.pcm").read_bytes() == PCM


# -- retention -----------------------------------------------------------------


def backdate(path: Path, age_days: float) -> None:
    stamp = time.time() - age_days * DAY
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (stamp, stamp))


def upload(root: Path, day: str, stem: str, size: int, age_days: float) -> list[Path]:
    folder = root / "http" / day
    folder.mkdir(parents=True, exist_ok=True)
    audio, sidecar = folder / f"{stem}.wav", folder / f"{stem}.json"
    audio.write_bytes(b"\x00" * size)
    sidecar.write_text('{"text": ""}')
    for path in (audio, sidecar):
        backdate(path, age_days)
    return [audio, sidecar]


def connection(root: Path, day: str, name: str, size: int, age_days: float) -> Path:
    folder = root / "sessions" / day / name
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text('{"t_ms": 0, "type": "close"}\n')
    (folder / "input.flac").write_bytes(b"\x00" * size)
    backdate(folder, age_days)
    return folder


def outsiders(root: Path) -> list[Path]:
    """What retention must never delete: the stop-result store, the server log,
    anything in a folder that is not a date."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / "stop_results.sqlite3", root / "server.log", root / "sessions" / "notes" / "keep.txt"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00" * 5000)
        backdate(path, 400)
    return paths


def test_retention_by_age(tmp_path: Path) -> None:
    keep = outsiders(tmp_path)
    old_upload = upload(tmp_path, "2025-01-01", "101010-0000aaaa", 100, 40)
    old_connection = connection(tmp_path, "2025-01-01", "101010-ws-0000aaaa", 100, 40)
    new_upload = upload(tmp_path, "2025-02-01", "101010-0000bbbb", 100, 10)
    new_connection = connection(tmp_path, "2025-02-01", "101010-ws-0000bbbb", 100, 10)

    deleted = prune(tmp_path, max_age_days=30, max_bytes=0)

    assert sorted(deleted) == sorted([old_upload[0].with_suffix(""), old_connection])
    assert not any(p.exists() for p in [*old_upload, old_connection])
    assert not (tmp_path / "http" / "2025-01-01").exists()  # emptied date folders go too
    assert not (tmp_path / "sessions" / "2025-01-01").exists()
    assert all(p.exists() for p in [*new_upload, new_connection, *keep])
    assert prune(tmp_path, max_age_days=0, max_bytes=0) == []  # 0 = keep


def test_retention_by_size_oldest_first(tmp_path: Path) -> None:
    keep = outsiders(tmp_path)
    items = [
        connection(tmp_path, "2025-03-01", "101010-ws-00000001", 1000, 5),
        upload(tmp_path, "2025-03-01", "101011-00000002", 1000, 4)[0].with_suffix(""),
        connection(tmp_path, "2025-03-02", "101010-ws-00000003", 1000, 3),
        upload(tmp_path, "2025-03-03", "101010-00000004", 1000, 2)[0].with_suffix(""),
        connection(tmp_path, "2025-03-03", "101011-ws-00000005", 1000, 1),
    ]
    # ~1000 bytes each (+ a small sidecar or events file): a 2.5 kB cap keeps the newest two.
    deleted = prune(tmp_path, max_age_days=0, max_bytes=0.0000025e9)
    assert deleted == items[:3]
    assert not (tmp_path / "sessions" / "2025-03-02").exists()
    assert (tmp_path / "sessions" / "2025-03-03" / "101011-ws-00000005").is_dir()
    assert (tmp_path / "http" / "2025-03-03" / "101010-00000004.wav").is_file()
    assert all(p.exists() for p in keep)


async def test_retention_never_deletes_an_open_connection(tmp_path: Path) -> None:
    settings = load_settings("mlx", {"POLYASR_LOG_RETENTION_DAYS": "1", "POLYASR_LOG_MAX_GB": "0.00001"})
    archives = Archives(tmp_path, "mlx", "m", settings)
    live = archives.new_connection()
    assert isinstance(live, ConnectionArchive)
    await live.audio(b"\x01\x00" * 4000)  # fits the 10 kB cap
    backdate(live.path, 3)  # old enough and big enough to go, but still open
    old = connection(tmp_path, "2025-03-01", "101010-ws-00000001", 5000, 3)  # now over the cap

    assert await archives.prune() == [old]
    assert (live.path / "input.pcm").stat().st_size == 8000
    await archives.close()  # completes the open connection ...
    assert read_events(live.path)[-1]["type"] == "close"
    backdate(live.path, 3)
    assert await archives.prune() == [live.path]  # ... after which it is fair game


async def test_start_recovers_then_prunes(tmp_path: Path) -> None:
    settings = load_settings("mlx", {"POLYASR_LOG_RETENTION_DAYS": "30"})
    killed = killed_folder(tmp_path, day="2025-03-01")
    (killed / "input.pcm").write_bytes(PCM)
    old = connection(tmp_path, "2025-01-01", "101010-ws-00000009", 100, 60)
    archives = Archives(tmp_path, "mlx", "m", settings)
    await archives.start()
    try:
        for _ in range(250):  # the timer's first pass runs as a task, at once
            if not old.exists():
                break
            await asyncio.sleep(0.02)
        assert not old.exists()
        assert read_events(killed)[-1]["recovered"] is True
    finally:
        await archives.close()
