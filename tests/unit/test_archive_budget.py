"""The archive's best effort, part by part: the byte budget at write time, the status
that counts what did not reach the disk, the stop store's fall-back to memory, and
the log folder's lock. (Real servers on a full tmpfs: tests/live/test_disk_live.py.)"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polyasr.archive.budget import DiskBudget
from polyasr.archive.lock import FolderBusy, FolderLock
from polyasr.archive.status import SESSIONS, STOPS, UPLOADS, ArchiveStatus
from polyasr.archive.uploads import UploadArchive
from polyasr.live.basr.stopstore import StopRecord, StopStore
from tests.audio_util import wav_bytes


def item(root: Path, name: str, size: int, mtime: float) -> Path:
    folder = root / "sessions" / "2025-03-01" / name
    folder.mkdir(parents=True)
    (folder / "input.flac").write_bytes(b"\x00" * size)
    for path in (folder / "input.flac", folder):
        os.utime(path, (mtime, mtime))
    return folder


def test_the_cap_makes_room_oldest_first_down_to_the_low_water_mark(tmp_path: Path) -> None:
    old, mid, new = (item(tmp_path, f"10101{i}-ws-0000000{i}", 3000, 1000 + i) for i in range(3))
    budget = DiskBudget(tmp_path, max_bytes=10_000, min_free_bytes=0)
    assert budget.allow(1000)  # 9000 + 1000 fits
    assert budget.allow(2000)  # over: the oldest go until 2000 more fit under 9000 (90 %)
    assert not old.exists() and mid.exists() and new.exists()
    assert budget.used == 6000 + 2000


def test_what_cannot_make_room_is_refused(tmp_path: Path) -> None:
    live = item(tmp_path, "101010-ws-00000001", 3000, 1000)
    budget = DiskBudget(tmp_path, max_bytes=4000, min_free_bytes=0, is_open=lambda folder: folder == live)
    assert not budget.allow(2000)  # only an open connection's folder could go: it never does
    assert live.exists()
    assert budget.allow(500)


def test_the_free_space_floor(tmp_path: Path) -> None:
    budget = DiskBudget(tmp_path, max_bytes=0, min_free_bytes=1e18)  # more than any disk has free
    assert not budget.allow(1)
    assert DiskBudget(tmp_path, max_bytes=0, min_free_bytes=1).allow(1)


def test_the_status_counts_and_clears_per_kind() -> None:
    status = ArchiveStatus()
    assert status.failing == []
    status.failed(STOPS, sqlite3.OperationalError("database or disk is full"))
    status.failed(UPLOADS, "budget", skipped=True)
    assert status.failing == [UPLOADS, STOPS]
    assert status.counts() == {SESSIONS: (0, 0), UPLOADS: (0, 1), STOPS: (1, 0)}
    assert status.as_dict()[STOPS]["last_error"] == "OperationalError: database or disk is full"
    status.ok(STOPS)
    assert status.failing == [UPLOADS]


def test_an_upload_the_budget_refuses_leaves_nothing_behind(tmp_path: Path) -> None:
    status = ArchiveStatus()
    budget = DiskBudget(tmp_path, max_bytes=1000, min_free_bytes=0)
    archive = UploadArchive(tmp_path, backend="cuda", model="m", budget=budget, status=status)
    upload = io.BytesIO(wav_bytes(np.zeros(16000, np.float32)))
    assert archive.record(upload, "a.wav", None, "") is None  # 32 kB of PCM16 over a 1 kB cap
    assert status.counts()[UPLOADS] == (0, 1) and status.failing == [UPLOADS]
    assert [p for p in (tmp_path / "http").rglob("*") if p.is_file()] == []


class FullDisk:
    """A database connection on a disk that has no room left."""

    def execute(self, *_: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        pass


def test_the_stop_store_falls_back_to_memory_and_prefers_newer_rows(tmp_path: Path) -> None:
    status = ArchiveStatus()
    store = StopStore(tmp_path / "stops.sqlite3", 100, status)
    store.put("s", "a", StopRecord("inc-1", "on disk", 3, 1.0))
    disk = store._disk
    store._disk = FullDisk()  # type: ignore[assignment]
    store.begin("s", "inc-2", 2.0)
    store.put("s", "a", StopRecord("inc-2", "in memory", 5, 2.0))
    assert store.incarnation("s") == "inc-2"
    assert store.get("s", "a", 3.0) == StopRecord("inc-2", "in memory", 5, 2.0)
    assert status.failing == [STOPS] and status.counts()[STOPS][0] >= 2
    store._disk = disk  # the disk has room again: a write there drops the memory's copy
    store.put("s", "a", StopRecord("inc-2", "on disk again", 5, 4.0))
    assert store.get("s", "a", 5.0) == StopRecord("inc-2", "on disk again", 5, 4.0)
    assert status.failing == []
    store.close()


LOCKER = """
import sys, time
from pathlib import Path
from polyasr.archive.lock import FolderLock
FolderLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_one_process_per_log_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match=rf"{tmp_path}.*pid {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)  # released by the kernel when its holder died
    assert lock.acquire()
    lock.release()
