"""What one client can make a real server hold, and input that must get a
clean 4xx: one server process for the module (small limits, the real engine
of this run on tiny checkpoints). Memory is the server process's own resident
size (psutil on its pid), with margins that hold on two busy cores."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed

from polyasr.core.constants import SAMPLE_RATE
from polyasr.live.basr.wire import build_frame
from tests.audio_util import encode, speech, wav_bytes
from tests.conftest import LiveServer, serving
from tests.live.test_ws_protocol import Client, frames, start, stream

MB = 1_048_576
BIG_FRAME = 262_144  # the largest frame payload the server takes (WS_MAX_FRAME_BYTES)
LIMITS = {
    "POLYASR_MAX_SESSIONS": "2",
    "POLYASR_MAX_HELD_SESSIONS": "3",
    "POLYASR_MAX_ALIGN_SEC": "60",
    "POLYASR_DECODED_AUDIO_MB": "6",
    "POLYASR_MAX_MANIFEST_ENTRIES": "20",
    "POLYASR_MAX_CONTEXT_CHARS": "64",
    "POLYASR_STREAMING_PROBE": "0",
    "POLYASR_MAX_NEW_TOKENS": "64",
    # The first dictation final fails on purpose (the internal_error test).
    "POLYASR_FAULTS": "decode:final:1",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifest-root")


@pytest.fixture(scope="module")
def server(
    tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory, root: Path
) -> Iterator[LiveServer]:
    logs = tmp_path_factory.mktemp("budget-logs")
    with serving(backend, tiny, logs, POLYASR_MANIFEST_ROOTS=str(root), **LIMITS) as live:
        yield live


def rss_mb(server: LiveServer) -> float:
    return psutil.Process(server.proc.pid).memory_info().rss / MB


class PeakRss:
    """The server's highest resident size while the block runs (sampled every 20 ms)."""

    def __init__(self, server: LiveServer) -> None:
        self.process = psutil.Process(server.proc.pid)
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss / MB)

    def __enter__(self) -> PeakRss:
        self.before = self.process.memory_info().rss / MB
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.before


def silence_flac(path: Path, seconds: float) -> Path:
    """Long silence in very few bytes, written in blocks (never whole in memory)."""
    block = np.zeros(300 * SAMPLE_RATE, np.int16)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC") as out:
        for _ in range(int(seconds // 300)):
            out.write(block)
    return path


def voice(seconds: float) -> np.ndarray:
    clip = speech("voice_a")
    return np.resize(clip, int(seconds * SAMPLE_RATE)).astype(np.float32)


# -- sockets -----------------------------------------------------------------


@pytest.fixture(scope="module")
def failed_final(server: LiveServer) -> dict[str, Any]:
    """The error of the server's first dictation final, which fails on purpose
    (an engine error where the connection did not expect one)."""
    client = start(server, "faulted")
    client.recv()
    stream(client, frames(20))
    client.send({"type": "stop", "stopId": "f", "finalCapturedSeq": 20})
    error = client.until("error")
    error["close"] = client.closed_with()
    return error


def test_a_socket_internal_error_names_an_error_id_not_the_exception(
    server: LiveServer, failed_final: dict[str, Any]
) -> None:
    assert failed_final["code"] == "internal_error" and failed_final["close"] == 1011
    assert failed_final["error"].startswith("internal error (error id ")
    assert "fault" not in failed_final["error"] and "POLYASR" not in failed_final["error"]
    error_id = failed_final["error"].removeprefix("internal error (error id ").rstrip(")")
    assert f"error id {error_id}" in server.log_path.read_text()  # the text is in the log, by id
    again = start(server, "after-fault")  # the server keeps serving
    assert again.recv()["type"] == "started"
    again.send({"type": "stop", "stopId": "s"})
    assert again.until("done")["stopId"] == "s"


def resume_and_finish(server: LiveServer, sid: str) -> None:
    """Take a held session over and stop it: a finished session is not held for a resume."""
    client = start(server, sid, kind="resume")
    resumed = client.recv()
    assert resumed["type"] == "resumed", resumed
    client.send({"type": "stop", "stopId": "end"})
    assert client.until("done")["stopId"] == "end"
    assert client.closed_with() == 1000  # the server let go of the session


def send_until_refused(client: Client, seqs: range) -> dict[str, Any]:
    """Frames of the largest size, each ahead of the missing seq 0, until the server refuses one."""
    payload = b"\1\0" * (BIG_FRAME // 2)
    try:
        for seq in seqs:
            client.send(build_frame(seq, payload))
    except ConnectionClosed:
        pass
    return client.until("error")


def test_detached_sessions_keep_no_frames_and_are_capped(
    server: LiveServer, failed_final: dict[str, Any]
) -> None:
    """Start, send seq 1–255 (256 KiB each) without seq 0, disconnect; again and again."""
    before = rss_mb(server)
    held = []
    for round_ in range(3):
        sid = f"hoard-{round_}"
        client = start(server, sid)
        assert client.recv()["type"] == "started"
        refused = send_until_refused(client, range(1, 256))
        assert refused["code"] == "seq_out_of_window"  # REORDER_MAX_BYTES: 2 MiB ahead, not 64
        held.append(sid)
    grown = rss_mb(server) - before
    busy = start(server, "hoard-3")  # MAX_SESSIONS is 2, but three are held for a resume
    error = busy.until("error")
    assert error["code"] == "server_busy" and "held for a resume" in error["error"]
    assert busy.closed_with() == 1013
    assert grown < 40, f"three rounds grew the server by {grown:.0f} MB"  # 192 MB when frames were kept
    for sid in held:
        resume_and_finish(server, sid)
    ok = start(server, "hoard-4")  # finished sessions make room
    assert ok.recv()["type"] == "started"
    ok.ws.close()


# -- decoded audio -------------------------------------------------------------


def test_compressed_silence_cannot_expand_on_align(server: LiveServer, tmp_path: Path) -> None:
    flac = silence_flac(tmp_path / "silence.flac", 1800)
    assert flac.stat().st_size < MB // 4  # half an hour of silence: 115 MB as float32
    with PeakRss(server) as rss, flac.open("rb") as upload:
        answer = httpx.post(f"{server.url}/v1/align", files={"file": ("s.flac", upload)}, timeout=120)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "audio_too_long"
    assert "60 s limit (POLYASR_MAX_ALIGN_SEC)" in answer.json()["detail"]
    assert rss.growth < 60, f"the server grew by {rss.growth:.0f} MB"  # twice 115 MB when decoded whole


def test_diarization_holds_its_audio_like_an_alignment(server: LiveServer, tmp_path: Path) -> None:
    """diarized_json keeps the whole upload (speaker turns need all of it): capped
    by MAX_ALIGN_SEC as it is decoded, and charged to the same budget."""
    flac = silence_flac(tmp_path / "silence.flac", 1800)
    with PeakRss(server) as rss, flac.open("rb") as upload:
        answer = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("s.flac", upload)},
            data={"response_format": "diarized_json"},
            timeout=120,
        )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "audio_too_long"
    assert "60 s limit (POLYASR_MAX_ALIGN_SEC)" in answer.json()["detail"]
    assert rss.growth < 60, f"the server grew by {rss.growth:.0f} MB"


def test_manifests_are_capped_in_entries_and_seconds(server: LiveServer, root: Path) -> None:
    clip = root / "clip.wav"
    clip.write_bytes(wav_bytes(voice(25)))
    many = [{"path": str(clip), "id": f"e{i}"} for i in range(150)]
    with PeakRss(server) as rss:
        answer = httpx.post(f"{server.url}/v1/align/manifest", json={"manifest": many}, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "manifest_too_large"
    assert (
        "150 entries" in answer.json()["detail"] and "POLYASR_MAX_MANIFEST_ENTRIES" in answer.json()["detail"]
    )
    assert rss.growth < 50
    three = many[:3]  # 75 s in all, over the alignment's 60 s
    answer = httpx.post(f"{server.url}/v1/align/manifest", json={"manifest": three}, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "audio_too_long"
    assert "the manifest's audio is longer than the 60 s limit (POLYASR_MAX_ALIGN_SEC)" in answer.text


def test_concurrent_alignments_share_one_budget_of_decoded_audio(server: LiveServer) -> None:
    """Two 55 s alignments at once would hold 7 MB of decoded audio; the budget is 6 MB.
    The first holds its audio through its ASR pass (seconds on the CPU), so the
    second, sent while it runs, finds no room to grow: 503, not a bigger process."""
    audio = wav_bytes(voice(55))

    def align(data: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/align", files={"file": ("v.wav", audio)}, data=data, timeout=120)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(align, {})  # transcribed first: holds its audio for seconds
        time.sleep(0.2)  # its audio is decoded by now (55 s of WAV: milliseconds)
        began = time.monotonic()
        second = align({"text": "hello"})
        busy_for = time.monotonic() - began
        assert not first.done(), "the first alignment ended before the second was decoded"
        assert first.result().status_code == 200, first.result().text
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "server_busy" and "Retry-After" in second.headers
    assert "POLYASR_DECODED_AUDIO_MB" in second.json()["detail"] and busy_for < 5
    assert align({"text": "hello"}).status_code == 200  # the budget came back


# -- input that must get a clean 4xx ---------------------------------------------


def test_a_playlist_in_a_manifest_is_refused_not_followed(
    server: LiveServer, root: Path, tmp_path: Path
) -> None:
    """FFmpeg's hls and concat demuxers would read the files a playlist names,
    outside the manifest roots too."""
    mp3 = encode(voice(2), "mp3")[0]
    outside = tmp_path / "secret.mp3"
    outside.write_bytes(mp3)
    playlist = root / "x.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{outside}\n#EXT-X-ENDLIST\n")
    (root / "inner").mkdir()
    (root / "inner" / "part.mp3").write_bytes(mp3)
    concat = root / "x.ffconcat"
    concat.write_text("ffconcat version 1.0\nfile 'inner/part.mp3'\n")
    for entry in (playlist, concat):
        answer = httpx.post(
            f"{server.url}/v1/align/manifest", json={"manifest": [{"path": str(entry)}]}, timeout=60
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_audio", answer.text
    upload = httpx.post(
        f"{server.url}/v1/audio/transcriptions", files={"file": ("x.m3u8", playlist.read_bytes())}, timeout=60
    )
    assert upload.status_code == 400


def test_a_nul_byte_in_a_manifest_path_is_400(server: LiveServer, root: Path) -> None:
    answer = httpx.post(
        f"{server.url}/v1/align/manifest", json={"manifest": [{"path": f"{root}/a\0.wav"}]}, timeout=30
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_manifest"
    assert "NUL" in answer.json()["detail"]


@pytest.mark.parametrize("field", ["prompt", "context"])
def test_an_http_hint_longer_than_the_socket_cap_is_422_naming_the_field(
    server: LiveServer, field: str
) -> None:
    audio = wav_bytes(voice(1))
    answer = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("v.wav", audio)},
        data={field: "x" * 65},
        timeout=60,
    )
    assert answer.status_code == 422 and f"'{field}'" in answer.json()["detail"]
    assert "POLYASR_MAX_CONTEXT_CHARS" in answer.json()["detail"]
    ok = httpx.post(
        f"{server.url}/v1/audio/transcriptions", files={"file": ("v.wav", audio)}, data={field: "x" * 64}
    )
    assert ok.status_code == 200


def test_an_align_text_is_capped_in_proportion_to_the_audio(server: LiveServer) -> None:
    audio = wav_bytes(voice(3))  # 3 s: 150 characters at 50 per second

    def post(text: str) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/align", files={"file": ("v.wav", audio)}, data={"text": text}, timeout=60
        )

    began = time.monotonic()
    answer = post("word " * 100_000)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_value"
    assert "'text'" in answer.json()["detail"] and "MAX_ALIGN_TEXT_CHARS_PER_SEC" in answer.json()["detail"]
    assert time.monotonic() - began < 30  # refused, not aligned
    assert post("hello " * 25).status_code == 200  # 150 characters fit


def test_the_server_still_dictates_after_every_refusal(
    server: LiveServer, failed_final: dict[str, Any]
) -> None:
    client = start(server, "last")
    client.recv()
    stream(client, frames(10))
    client.send({"type": "stop", "stopId": "z", "finalCapturedSeq": 10})
    assert client.until("final")["recognizedThroughSeq"] == 10
    assert client.until("done")["stopId"] == "z"
