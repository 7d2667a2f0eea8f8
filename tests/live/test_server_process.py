"""The real server process (server.py / cuda/server.py under uvicorn) over
real loopback sockets: start-up, health, transcription, errors, unload."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx

from tests.audio_util import encode, speech, wav_bytes
from tests.conftest import ENTRY_POINTS, REPO

SPEECH = speech()


def test_live_server_end_to_end(live_server: Any, backend: str) -> None:
    server = live_server(POLYASR_MAX_UPLOAD_MB="1")
    with httpx.Client(base_url=server.url, timeout=120) as http:
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["backend"] == backend
        assert health["manager"]["resident"] == ["asr"]

        data, suffix = encode(SPEECH, "m4a")
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (f"memo{suffix}", data)},
            data={"response_format": "verbose_json", "language": "en"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["language"] == "English"

        bad = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"RIFF" + b"\1" * 500)})
        assert bad.status_code == 400 and "detail" in bad.json()

        def stream() -> Any:
            yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            for _ in range(64):
                yield b"\0" * 65536
            yield b"\r\n--zz--\r\n"

        too_big = http.post(
            "/v1/audio/transcriptions",
            content=stream(),
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert too_big.status_code == 413

        unloaded = http.post("/model/unload").json()
        assert unloaded["unloaded"] == ["asr"] and unloaded["manager"]["resident"] == []
        again = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(SPEECH[:16000]))})
        assert again.status_code == 200
        assert http.get("/health").json()["manager"]["resident"] == ["asr"]


def run_entry(backend: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRY_POINTS[backend])],
        env={**os.environ, **env},
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invalid_config_fails_start_up_naming_the_variable(backend: str) -> None:
    done = run_entry(backend, POLYASR_IDLE_EVICT_SECONDS="soon")
    assert done.returncode == 2
    assert "POLYASR_IDLE_EVICT_SECONDS" in done.stderr


def test_cuda_without_a_gpu_says_so(backend: str, tiny: Any) -> None:
    if backend != "cuda":
        return
    done = run_entry("cuda", POLYASR_MODEL=str(tiny.asr), POLYASR_DEVICE="cuda:0")
    assert done.returncode == 2
    assert "no CUDA device is available" in done.stderr and "POLYASR_DEVICE=cpu" in done.stderr
    vllm = run_entry("cuda", POLYASR_MODEL=str(tiny.asr), POLYASR_DEVICE="cpu", POLYASR_BACKEND="vllm")
    assert vllm.returncode == 2 and "vllm is not installed" in vllm.stderr
