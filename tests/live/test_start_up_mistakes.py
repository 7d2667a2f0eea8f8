"""What a new user's first mistakes look like from a real server process:
a model path with a typo or a folder without the model is one ERROR line
that says so, a device the backend cannot use stops start-up naming the
variable, and a unit that cannot load (the aligner, when only the ASR
weights were fetched) makes ``/health`` say ``degraded`` instead of ``ok``.

The three processes start together (the start-up imports dominate and each
uses about one core), so the module costs about one start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audio_util import speech, wav_bytes
from tests.conftest import ENTRY_POINTS, REPO, LiveServer, tiny_env

CLIP = wav_bytes(speech()[:16000])
# A device each backend's library cannot parse: torch has no "gpu", MLX no "cuda".
BAD_DEVICE = {"cuda": "gpu", "mlx": "cuda:0"}


@dataclass
class Servers:
    typo: LiveServer  # POLYASR_MODEL names no folder; POLYASR_ALIGNER_MODEL a folder without a model
    typo_path: Path
    parent: Path
    align_down: LiveServer  # local ASR weights only; the aligner is a hub id offline with an empty cache
    device: subprocess.CompletedProcess[str]  # start-up with a device the backend cannot use


@pytest.fixture(scope="module")
def servers(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("mistakes")
    typo_path, parent = tmp / "models" / "Qwen3-ASR-typo", tiny.asr.parent
    typo_env = tiny_env(
        tiny,
        POLYASR_MODEL=str(typo_path),
        POLYASR_ALIGNER_MODEL=str(parent),
        POLYASR_LOG_DIR=str(tmp / "typo-logs"),
    )
    down_env = tiny_env(tiny, POLYASR_LOG_DIR=str(tmp / "down-logs"), HF_HOME=str(tmp / "empty-hf"))
    del down_env["POLYASR_ALIGNER_MODEL"]  # the backend's default: a hub id, not in this cache
    assert "POLYASR_ALIGNER_MODEL" not in os.environ
    device = subprocess.Popen(
        [sys.executable, str(ENTRY_POINTS[backend])],
        env={**os.environ, **tiny_env(tiny, POLYASR_DEVICE=BAD_DEVICE[backend])},
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    typo = LiveServer(backend, typo_env, tmp / "typo.log")
    align_down = LiveServer(backend, down_env, tmp / "down.log")
    try:
        out, err = device.communicate(timeout=120)
        typo.wait_ready()
        align_down.wait_ready()
        finished = subprocess.CompletedProcess(device.args, device.returncode, out, err)
        yield Servers(typo, typo_path, parent, align_down, finished)
    finally:
        device.kill()
        typo.stop()
        align_down.stop()


def error_lines(server: LiveServer) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if " ERROR " in line]


def test_a_model_path_with_a_typo_is_one_error_line_that_says_so(servers: Servers) -> None:
    server = servers.typo
    answer = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)}, timeout=60)
    assert answer.status_code == 503
    assert f"{servers.typo_path} does not exist" in answer.json()["detail"]
    [line] = error_lines(server)  # one line, not one per request that retried the load
    assert f"{servers.typo_path} does not exist" in line and "set POLYASR_MODEL to the folder" in line
    text = server.log_path.read_text()
    for noise in ("Traceback", "HFValidationError", "Repo id", "Unrecognized model"):
        assert noise not in text, text[-3000:]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "degraded" and health["reasons"][:2] == ["weights_missing", "asr_unavailable"]
    assert health["weights_detail"] == f"{servers.typo_path} does not exist"


def test_a_folder_without_a_model_says_it_has_no_config_json(servers: Servers) -> None:
    """The aligner set to the folder that holds the checkpoints, not to one of them."""
    server = servers.typo
    answer = httpx.post(
        f"{server.url}/v1/align",
        files={"file": ("a.wav", CLIP)},
        data={"text": "hello", "language": "en"},
        timeout=60,
    )
    assert answer.status_code == 503 and f"{servers.parent} has no config.json" in answer.json()["detail"]
    [line] = [line for line in error_lines(server) if "loading align failed" in line]
    assert f"{servers.parent} has no config.json" in line and "POLYASR_ALIGNER_MODEL" in line
    assert "Unrecognized" not in server.log_path.read_text()
    units = httpx.get(f"{server.url}/health").json()["units"]
    assert units["align"]["ready"] is False and "has no config.json" in units["align"]["detail"]


def test_a_device_the_backend_cannot_use_stops_start_up_naming_it(servers: Servers, backend: str) -> None:
    done = servers.device
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"POLYASR_DEVICE={BAD_DEVICE[backend]!r}" in done.stderr
    assert "Traceback" not in done.stderr


def test_health_is_degraded_while_the_aligner_cannot_load(servers: Servers) -> None:
    """Only POLYASR_MODEL set (what the quickstart says), offline: transcription
    works, everything that needs the aligner answers 503, and /health says why."""
    url = servers.align_down.url
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "degraded" and health["reasons"] == ["align_unavailable"]
    assert health["weights_present"] is True  # the ASR weights, as before
    units = health["units"]
    assert units["asr"] == {"ready": True, "detail": None}
    assert units["align"]["ready"] is False
    assert health["aligner_model"] in units["align"]["detail"]
    assert "POLYASR_ALIGNER_MODEL" in units["align"]["detail"]
    ok = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)}, timeout=60)
    assert ok.status_code == 200
    srt = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", CLIP)},
        data={"response_format": "srt", "language": "en"},
        timeout=60,
    )
    assert srt.status_code == 503 and "align model unavailable" in srt.json()["detail"]
    after = httpx.get(f"{url}/health").json()
    assert after["status"] == "degraded" and after["units"]["align"]["ready"] is False
