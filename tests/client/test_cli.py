"""The ``polyasr`` command, run as a real subprocess (the installed console
script, and ``python -m polyasr_client``) against the live server."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from polyasr_client.cli import build_parser
from polyasr_client.locate import local_server

from tests.audio_util import encode, speech, wav_bytes
from tests.conftest import LiveServer, free_port

POLYASR = str(Path(sys.executable).parent / "polyasr")
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


def polyasr(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "POLYASR_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [POLYASR, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "voice_a.wav"
    path.write_bytes(wav_bytes(speech("voice_a")))
    return path


def test_cli_health_prints_the_status_and_exits_by_it(asr_server: LiveServer) -> None:
    run = polyasr("--url", asr_server.url, "health")
    body = json.loads(run.stdout)
    assert body["status"] in ("ok", "degraded") and "manager" in body
    assert run.returncode == (0 if body["status"] == "ok" else 1)


def test_cli_takes_the_url_from_polyasr_url_and_the_flag_wins(asr_server: LiveServer) -> None:
    from_env = polyasr("health", env={"POLYASR_URL": asr_server.url})
    assert "manager" in json.loads(from_env.stdout)
    flag_wins = polyasr("health", "--url", asr_server.url, env={"POLYASR_URL": UNREACHABLE})
    assert "manager" in json.loads(flag_wins.stdout)
    unreachable = polyasr("health", env={"POLYASR_URL": UNREACHABLE})
    assert unreachable.returncode == 1 and unreachable.stdout == ""
    assert "connection_lost" in unreachable.stderr and "127.0.0.1:9" in unreachable.stderr


def test_cli_transcribe_in_every_format(asr_server: LiveServer, voice_wav: Path) -> None:
    common = ("--url", asr_server.url, "transcribe", str(voice_wav), "--language", "en")
    as_json = polyasr(*common)
    as_text = polyasr(*common, "--format", "text")
    verbose = polyasr(*common, "--format", "verbose_json")
    assert as_json.returncode == as_text.returncode == verbose.returncode == 0
    assert as_json.stderr == ""  # no progress bar when stderr is not a terminal
    text = json.loads(as_json.stdout)["text"]
    assert text and as_text.stdout == text + "\n"
    details = json.loads(verbose.stdout)
    assert details["text"] == text and details["duration"] == pytest.approx(
        len(speech("voice_a")) / 16000, abs=0.01
    )


def test_cli_transcribe_reports_typed_errors(asr_server: LiveServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not audio")
    run = polyasr("--url", asr_server.url, "transcribe", str(notes))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith("polyasr: invalid_audio, HTTP 400: not an audio file the server can read (")


def test_cli_dictate_streams_a_file_and_prints_the_covered_final(
    asr_server: LiveServer, tmp_path: Path
) -> None:
    voice = speech("voice_a")
    data, suffix = encode(voice, "ogg")  # 44.1 kHz stereo Vorbis: decoded to 16 kHz mono by the client
    clip = tmp_path / f"voice{suffix}"
    clip.write_bytes(data)
    run = polyasr(
        "dictate", str(clip), "--url", asr_server.url, "--language", "en", "--pace", "3", "--format", "json",
        "--partials", "--final-timeout", "120",  # a loaded CI machine must not turn this into a fallback
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["source"] == "stream" and result["fallback_reason"] is None and result["text"], result
    assert result["recognized_through_seq"] == result["final_captured_seq"]
    assert abs(result["final_captured_seq"] - len(voice) / 1600) <= 2  # 100 ms frames of 16 kHz audio
    assert "partial: " in run.stderr


def test_cli_dictations_as_fast_as_possible_are_no_evidence_of_live_rot(
    asr_server: LiveServer, voice_wav: Path
) -> None:
    """``dictate --pace 0`` sends seconds of speech in a fraction of a second: no
    partial can come, and that must not count as a rotted model (it used to
    reload a healthy one after two such runs)."""
    live = httpx.get(f"{asr_server.url}/health").json()["streaming_probe"]["live"]
    assert live["enabled"]  # partials on: the detector is watching
    witnessed = asr_server.log_path.read_text().count("live rot witness")
    for _ in range(2):  # two witnesses in a row would request a reload (LIVE_RELOAD_WITNESSES)
        run = polyasr("--url", asr_server.url, "dictate", str(voice_wav), "--language", "en", "--pace", "0")
        assert run.returncode == 0 and run.stdout.strip(), run.stderr
    after = httpx.get(f"{asr_server.url}/health").json()["streaming_probe"]["live"]
    assert asr_server.log_path.read_text().count("live rot witness") == witnessed
    assert after["reloads"] == live["reloads"] and not after["reload_requested"]


def test_cli_align_prints_the_alignment(asr_server: LiveServer, voice_wav: Path) -> None:
    text = "Hello world. This is a test!"
    run = polyasr("--url", asr_server.url, "align", str(voice_wav), "--text", text, "--language", "en")
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["text"] == text and body["language"] == "English"
    assert [s["text"] for s in body["segments"]] == ["Hello world.", "This is a test!"]
    assert all(set(w) == {"text", "start", "end"} for s in body["segments"] for w in s["words"])


def test_cli_transcribe_diarize_prints_who_said_what(asr_server: LiveServer, tmp_path: Path) -> None:
    pause = np.zeros(8000, np.float32)
    clip, reference = tmp_path / "talk.wav", tmp_path / "bob.wav"
    clip.write_bytes(wav_bytes(np.concatenate([speech("voice_a")[:64000], pause, speech("voice_b")[:72000]])))
    reference.write_bytes(wav_bytes(speech("voice_b")[72000:120000]))
    args = ("transcribe", str(clip), "--diarize", "--format", "text", "--speaker", f"bob={reference}")
    run = polyasr("--url", asr_server.url, *args)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["A", "bob"]
    assert all(re.match(r"^\S+ \d+\.\d\d-\d+\.\d\d: \S", line) for line in lines)
    as_json = json.loads(polyasr("--url", asr_server.url, "transcribe", str(clip), "--diarize").stdout)
    assert [s["speaker"] for s in as_json["segments"]] == ["A", "B"]
    unpaired = polyasr("--url", asr_server.url, "transcribe", str(clip), "--speaker", f"bob={reference}")
    assert unpaired.returncode == 2 and "--diarize" in unpaired.stderr


def test_cli_transcribe_writes_subtitles(asr_server: LiveServer, voice_wav: Path) -> None:
    args = ("transcribe", str(voice_wav), "--language", "en", "--format", "srt")
    run = polyasr("--url", asr_server.url, *args)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("1\n00:00:") and " --> " in run.stdout and not run.stdout.endswith("\n\n")
    assert build_parser().parse_args(["transcribe", "a.wav", "--format", "vtt"]).format == "vtt"


def on_terminal(args: list[str], stream: str) -> tuple[int, str, str]:
    """Run ``python -m polyasr_client ARGS`` with ``stream`` (stdout or
    stderr) on a pseudo-terminal: (exit status, what the terminal showed,
    the other stream)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    with tempfile.TemporaryFile() as other:
        streams: dict[str, Any] = {"stdout": other, "stderr": other, stream: secondary}
        command = [sys.executable, "-m", "polyasr_client", *args]
        proc = subprocess.Popen(command, stdout=streams["stdout"], stderr=streams["stderr"])
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        status = proc.wait(timeout=120)
        os.close(primary)
        other.seek(0)
        return status, shown.decode(), other.read().decode()


def test_cli_dictate_rewrites_partials_in_place_on_a_tty(asr_server: LiveServer, voice_wav: Path) -> None:
    args = ["--url", asr_server.url, "dictate", str(voice_wav), "--language", "en", "--pace", "3"]
    status, screen, errors = on_terminal(args, "stdout")
    assert status == 0, errors
    erase = "\r\x1b[K"
    assert screen.count(erase) >= 2  # at least one partial, then the erase before the final
    final = screen.rsplit(erase, 1)[1]
    assert final.endswith("\r\n") and final.strip() and erase not in final


def test_cli_shows_upload_progress_on_a_terminal(asr_server: LiveServer, voice_wav: Path) -> None:
    args = ["--url", asr_server.url, "transcribe", str(voice_wav), "--language", "en"]
    status, screen, out = on_terminal(args, "stderr")
    assert status == 0 and json.loads(out)["text"]
    assert "100%" in screen and "transcribing" in screen  # the bar filled, then waits on the server


def _capture_library_loads() -> bool:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):  # OSError: installed, but PortAudio is missing
        return False
    return True


@pytest.mark.skipif(_capture_library_loads(), reason="a capture library is installed and loads")
def test_cli_dictate_mic_without_sounddevice_says_what_to_install(asr_server: LiveServer) -> None:
    run = polyasr("dictate", "--mic", "--url", asr_server.url)
    assert run.returncode == 2 and "sounddevice" in run.stderr and "pip install" in run.stderr


def test_cli_unload_prints_what_was_evicted(asr_server: LiveServer, voice_wav: Path) -> None:
    polyasr("--url", asr_server.url, "transcribe", str(voice_wav), "--language", "en")
    run = polyasr("--url", asr_server.url, "unload")
    body: Any = json.loads(run.stdout)
    assert run.returncode == 0 and "asr" in body["unloaded"] and body["manager"]["resident"] == []


def test_cli_a_file_it_cannot_read_is_one_line(asr_server: LiveServer, tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    for command in ("transcribe", "align"):
        run = polyasr("--url", asr_server.url, command, str(missing))
        assert run.returncode == 1 and run.stdout == "", run.stderr
        assert run.stderr.endswith(f"{missing}: No such file or directory\n"), run.stderr
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("polyasr: cannot read ")


def test_cli_takes_a_websocket_url_and_refuses_what_names_no_server(asr_server: LiveServer) -> None:
    socket_url = asr_server.url.replace("http://", "ws://") + "/ws/transcribe"
    assert json.loads(polyasr("health", env={"POLYASR_URL": socket_url}).stdout)["manager"]
    refused = polyasr("--url", "ftp://127.0.0.1:8766", "health")
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        refused.stderr
        == "polyasr: 'ftp://127.0.0.1:8766' is not a server URL; use one like http://127.0.0.1:8766\n"
    )


def test_cli_finds_this_machines_server_and_says_which(asr_server: LiveServer) -> None:
    run = polyasr("health", env={"POLYASR_PORT": str(asr_server.port)})
    assert json.loads(run.stdout)["manager"]
    assert run.stderr == f"polyasr: server {asr_server.url} (from POLYASR_PORT)\n"
    closed = free_port()  # nothing listens there: the next port is tried
    assert local_server({}, ports=(closed, asr_server.port)) == (asr_server.url, "found listening")
    url, why = local_server({}, ports=(closed,))
    assert url == f"http://127.0.0.1:{closed}" and "pass --url or set POLYASR_URL" in why
