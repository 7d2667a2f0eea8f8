"""The disk under a real server process: the log folder on a small tmpfs (as root; else a
plain folder, and the tests that need a full disk skip).

* A full disk costs no final: the stop store falls back to memory for the
  answer, the archive counts what it could not write, ``/health`` says so,
  and all of it recovers once there is room again.
* The archive keeps what an upload decoded to (FLAC, 16 kHz), in a folder of
  its own, and stays under ``LOG_MAX_GB`` at write time, not only at the
  hourly sweep.
* A second server refuses a log folder or port that is taken, before it
  loads a model.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from polyasr.archive.retention import archive_bytes
from tests.audio_util import encode, speech
from tests.conftest import ENTRY_POINTS, REPO, LiveServer, tiny_env
from tests.live.test_metrics import scrape, value
from tests.live.test_ws_protocol import frames, start, stream

TMPFS_MB = 12
CAP_BYTES = 1_000_000  # LOG_MAX_GB=0.001
SETTINGS = {
    "POLYASR_LOG_MAX_GB": "0.001",
    "POLYASR_LOG_MIN_FREE_GB": "0.0005",
    "POLYASR_PARTIALS_ENABLED": "0",
    # noise decodes to its whole token budget on random weights: keep that short
    "POLYASR_MAX_NEW_TOKENS": "16",
    "POLYASR_MIN_NEW_TOKENS": "4",
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The log folder: a small tmpfs of its own when we may mount one."""
    folder = tmp_path_factory.mktemp("disk") / "logs"
    folder.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)]).returncode
        == 0
    )
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def on_tmpfs(folder: Path) -> bool:
    return os.path.ismount(folder)


@pytest.fixture(scope="module")
def server(
    tiny: Any, backend: str, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("disk-server") / "server.log"  # not on the small disk
    live = LiveServer(backend, tiny_env(tiny, POLYASR_LOG_DIR=str(logs), **SETTINGS), log_path)
    live.logs = logs
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def padded_wav(seconds: float, padding: int) -> bytes:
    """A WAV whose ``padding`` bytes of JUNK chunk come before ``seconds`` of speech."""
    pcm = (np.clip(speech()[: int(seconds * 16000)], -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt
    body += (
        b"JUNK" + struct.pack("<I", padding) + b"\0" * padding + b"data" + struct.pack("<I", len(pcm)) + pcm
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def upload(server: LiveServer, data: bytes, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (name, data)}, timeout=120)


def upload_folders(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "http").glob("*/*") if p.is_dir())


def test_an_upload_is_archived_as_the_audio_it_decoded_to_in_its_own_folder(server: LiveServer) -> None:
    assert server.logs is not None
    wav = padded_wav(1.0, padding=3_000_000)  # 3 MB on the wire, one second of audio
    for name in ("notes.json", "upload.json"):  # named like a sidecar: each keeps its audio
        assert upload(server, wav, name).status_code == 200
    folders = upload_folders(server.logs)
    assert len(folders) == 2
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["audio.flac", "upload.json"]
        info = soundfile.info(str(folder / "audio.flac"))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
        assert sum(p.stat().st_size for p in folder.iterdir()) < 60_000  # not the 3 MB sent
    names = {json.loads((f / "upload.json").read_text())["filename"] for f in folders}
    assert names == {"notes.json", "upload.json"}


def test_the_archive_stays_under_its_cap_at_write_time(server: LiveServer) -> None:
    assert server.logs is not None
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, 8 * 16000).astype(np.float32)
    data = encode(noise, "flac")[0]  # ~250 kB of FLAC that does not compress
    for n in range(8):  # 2 MB in all, twice the cap, far quicker than the hourly sweep
        assert upload(server, data, f"noise-{n}.flac").status_code == 200
        assert archive_bytes(server.logs) <= CAP_BYTES
    kept = [json.loads((f / "upload.json").read_text())["filename"] for f in upload_folders(server.logs)]
    assert "noise-7.flac" in kept and "noise-0.flac" not in kept  # the oldest made room


def fill(folder: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def dictate(server: LiveServer, sid: str) -> dict[str, Any]:
    client = start(server, sid)
    assert client.recv()["type"] == "started"
    assert stream(client, frames(20))[-1] == 19
    client.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
    final = client.until("final")
    assert client.recv()["type"] == "done"
    return final


def health(server: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/health", timeout=30).json()


def test_a_full_disk_loses_no_final_and_health_says_so(server: LiveServer) -> None:
    assert server.logs is not None
    if not on_tmpfs(server.logs):
        pytest.skip("a full disk needs a tmpfs of its own: mounting one needs root")
    for kind in ("http", "sessions"):  # nothing the budget could delete to make room
        shutil.rmtree(server.logs / kind, ignore_errors=True)
    filler = fill(server.logs)
    try:
        final = dictate(server, "full-disk")
        assert final["text"] and final["recognizedThroughSeq"] == 20
        retry = start(server, "full-disk", kind="resume")
        assert retry.recv()["type"] == "resumed"
        retry.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
        assert retry.until("final") == final  # the answer kept in memory while the disk is full
        assert upload(server, padded_wav(1.0, 0), "a.wav").status_code == 200
        body = health(server)
        assert body["status"] == "degraded" and "archive_failing" in body["reasons"]
        assert body["archive"]["stops"]["failing"] and "full" in body["archive"]["stops"]["last_error"]
        assert body["archive"]["sessions"]["failing"] and body["archive"]["uploads"]["failing"]
        metrics = scrape(server.url)
        assert value(metrics, "polyasr_archive_writes_lost_total", kind="stops", outcome="failed") >= 2
        assert value(metrics, "polyasr_archive_writes_lost_total", kind="uploads", outcome="skipped") >= 1
    finally:
        filler.unlink()
    assert dictate(server, "room-again")["text"]  # its stop result and archive reach the disk
    assert upload(server, padded_wav(1.0, 0), "b.wav").status_code == 200
    deadline = time.monotonic() + 10
    while (body := health(server))["reasons"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the connection's archive closes after its socket
    assert body["status"] == "ok" and not any(kind["failing"] for kind in body["archive"].values())


def entry(backend: str, tiny: Any, **env: str) -> subprocess.Popen[str]:
    """The server's entry point as a second process: ``POLYASR_*`` from ``env``."""
    full = {**os.environ, **tiny_env(tiny, POLYASR_HOST="127.0.0.1", **env)}
    return subprocess.Popen(
        [sys.executable, str(ENTRY_POINTS[backend])],
        env=full,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_second_server_refuses_a_taken_log_folder_or_port_before_loading(
    server: LiveServer, backend: str, tiny: Any, tmp_path: Path
) -> None:
    assert server.logs is not None
    same_folder = entry(backend, tiny, POLYASR_LOG_DIR=str(server.logs), POLYASR_PORT="0")
    same_port = entry(backend, tiny, POLYASR_LOG_DIR=str(tmp_path / "logs"), POLYASR_PORT=str(server.port))
    folder_out, _ = same_folder.communicate(timeout=120)
    port_out, _ = same_port.communicate(timeout=120)
    assert same_folder.returncode == 2 and same_port.returncode == 2
    assert f"log folder {server.logs} (POLYASR_LOG_DIR)" in folder_out
    assert f"pid {server.proc.pid}" in folder_out
    assert f"cannot listen on 127.0.0.1:{server.port}" in port_out
    for output in (folder_out, port_out):
        assert "application startup" not in output  # refused before the app (and its models) started
    assert health(server)["status"] in ("ok", "degraded")  # the first server is untouched
