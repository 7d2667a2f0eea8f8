"""Every README code block a user can run, run as written against a real server.

Blocks are found by their language tag, each runs by what it is (a Python
program, shell commands, a request body), and only the host, port and file
paths are adapted: the server under test for ``127.0.0.1:8766`` or
``asr.local:8766``, speech clips for ``memo.m4a``, ``memo.wav`` and the
like. Each must finish within a bound and print what it promises. A block
that is not meant to run here is listed in ``SKIPPED`` with the reason; a
block in neither list fails, so a new block is never silently untested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.audio_util import encode, speech, wav_bytes
from tests.conftest import LiveServer, serving
from tests.readme_blocks import Block, readme_blocks, shell_commands

BOUND_SEC = 60  # each program or command, start to end
CLIP = speech()[: 16000 * 3]  # three seconds of speech: real-time dictation stays short
# Two voices with a pause between them, and more of the second voice as its reference.
MEETING = np.concatenate([speech()[: 16000 * 4], np.zeros(8000, np.float32), speech("voice_b")[:72000]])
AGENT = speech("voice_b")[72000:120000]


@dataclass
class Site:
    """The server under test and the files that stand in for the README's."""

    server: LiveServer
    files: dict[str, Path]

    def adapt(self, text: str) -> str:
        for written in ("http://127.0.0.1:8766", "http://asr.local:8766"):
            text = text.replace(written, self.server.url)
        text = text.replace("localhost:8766", f"localhost:{self.server.port}")
        for name, path in self.files.items():
            text = text.replace(name, str(path))
        return text


@pytest.fixture(scope="module")
def site(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("readme")
    wav, m4a = tmp / "speech.wav", tmp / "speech.m4a"
    wav.write_bytes(wav_bytes(CLIP))
    m4a.write_bytes(encode(CLIP, "m4a")[0])
    files = {"memo.m4a": m4a, "memo.wav": wav, "talk.wav": wav}
    meeting, meeting_m4a, agent = tmp / "meeting.wav", tmp / "meeting.m4a", tmp / "agent.wav"
    meeting.write_bytes(wav_bytes(MEETING))
    meeting_m4a.write_bytes(encode(MEETING, "m4a")[0])
    agent.write_bytes(wav_bytes(AGENT))
    files |= {"meeting.wav": meeting, "meeting.m4a": meeting_m4a, "agent.wav": agent}
    files |= {"/data/el_1.wav": wav, "/data/el_2.wav": wav}
    (tmp / "logs").mkdir()
    with serving(backend, tiny, tmp / "logs") as server:
        yield Site(server, files)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=BOUND_SEC, env=env)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


def run_python(block: Block, site: Site, tmp_path: Path) -> str:
    """A Python program: saved as a file and run in this environment."""
    program = tmp_path / "example.py"
    program.write_text(site.adapt(block.text))
    return run([sys.executable, str(program), str(site.files["memo.wav"])]).stdout


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def realtime_example(block: Block, site: Site, tmp_path: Path) -> None:
    """Prints the file's transcript, then ends."""
    [transcript] = lines(run_python(block, site, tmp_path))
    assert transcript.strip()


def dictation_example(block: Block, site: Site, tmp_path: Path) -> None:
    """Prints the final's text and where it came from."""
    [printed] = lines(run_python(block, site, tmp_path))
    text, _, source = printed.rpartition(" ")
    assert text.strip() and source in ("(stream)", "(batch)")


def curl_example(block: Block, site: Site, tmp_path: Path) -> None:
    """``verbose_json``: text, language, duration and segments."""
    [command] = shell_commands(block)
    body = json.loads(run(["sh", "-c", site.adapt(command)]).stdout)
    assert body["text"] and body["language"] == "English"
    assert abs(body["duration"] - len(CLIP) / 16000) < 0.05 and body["segments"]


def diarize_example(block: Block, site: Site, tmp_path: Path) -> None:
    """``diarized_json`` with a known speaker: the first voice is ``A``, the
    second carries the reference's name."""
    [command] = shell_commands(block)
    out = run(["sh", "-c", site.adapt(command)]).stdout
    body = json.loads(out)
    assert [s["speaker"] for s in body.get("segments", ())] == ["A", "agent"], out


def manifest_example(block: Block, site: Site, tmp_path: Path) -> None:
    """The request body as written: both entries aligned, the second shifted by its offset."""
    request = json.loads(site.adapt(block.text))
    answer = httpx.post(f"{site.server.url}/v1/align/manifest", json=request, timeout=BOUND_SEC)
    assert answer.status_code == 200, answer.text
    segments = answer.json()["segments"]
    assert segments and segments[0]["start"] < 12.34 <= segments[-1]["start"]


# What each `polyasr` subcommand of the CLI block promises, by its output.
def _transcribed(out: str) -> bool:
    return bool(out.strip())


def _aligned(out: str) -> bool:
    return bool(json.loads(out)["segments"])


def _healthy(out: str) -> bool:
    return json.loads(out)["status"] == "ok"


def _unloaded(out: str) -> bool:
    return "unloaded" in json.loads(out)


CLI_PROMISES: dict[str, Callable[[str], bool]] = {
    "transcribe": _transcribed,
    "align": _aligned,
    "dictate": _transcribed,
    "health": _healthy,
    "unload": _unloaded,
}
SKIPPED_COMMANDS = {"polyasr dictate --mic": "needs a microphone and PortAudio"}


def cli_example(block: Block, site: Site, tmp_path: Path) -> None:
    """Each command in one environment (the block's exports), with the CLI of
    this environment on PATH; each exits 0 with its output. They run side by
    side (each is a process start), ``unload`` last: it evicts their models."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("POLYASR_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    commands = []
    for command in shell_commands(block):
        command = site.adapt(command.split("  #")[0].strip())
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            env[name] = value
        elif not any(command.startswith(skipped) for skipped in SKIPPED_COMMANDS):
            commands.append(command)
    assert [c.split()[1] for c in commands] == [
        "transcribe",
        "transcribe",
        "align",
        "dictate",
        "health",
        "unload",
    ]
    *together, last = commands
    running = [
        (
            c,
            subprocess.Popen(
                ["bash", "-c", c], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
        for c in together
    ]
    try:
        for command, proc in running:
            out, err = proc.communicate(timeout=BOUND_SEC)
            assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{out}\n{err[-3000:]}"
            assert CLI_PROMISES[command.split()[1]](out), f"{command}: {out}"
    finally:
        for _, proc in running:
            proc.kill()
    out = run(["bash", "-c", last], env).stdout
    assert CLI_PROMISES[last.split()[1]](out), f"{last}: {out}"


Runner = Callable[[Block, Site, Path], None]
# Each README block by (its section, the start of its first line): how it runs...
RUNNERS: dict[tuple[str, str], Runner] = {
    ("`WS /v1/realtime` — OpenAI Realtime transcription", "import asyncio, base64"): realtime_example,
    ("`POST /v1/audio/transcriptions`", "curl "): curl_example,
    ("Speaker diarization", "curl "): diarize_example,
    ("`POST /v1/align/manifest`", '{"manifest": '): manifest_example,
    ("Clients", "export POLYASR_URL="): cli_example,
    ("Clients", "import asyncio, wave"): dictation_example,
}
# ...or why it does not run here.
SHAPE = "the shape of an answer, not something to run (the contract tests check its fields)"
INSTALLS = "creates a virtualenv and installs from PyPI (network, minutes); the suite runs in the built ones"
SKIPPED: dict[tuple[str, str], str] = {
    ("polyasr", "make serve"): "builds both environments and runs the whole suite; CI runs exactly this",
    ("`POST /v1/align`", '{"text": '): SHAPE,
    ("Speaker diarization", '{"task": '): SHAPE,
    ("`GET /health`", "{"): SHAPE,
    ("`POST /model/unload`", '{"unloaded": '): SHAPE,
    ("Manual installation", "python3 -m venv .venv-mlx"): INSTALLS,
    ("Manual installation", "python3 -m venv .venv-cuda"): INSTALLS,
    ("As a launchd agent (macOS)", 'REPO="$(pwd)"'): (
        "needs macOS's launchctl; tests/live/test_service_templates.py checks the filled template"
    ),
    ("As a systemd service (Linux + NVIDIA)", 'REPO="$(pwd)"'): (
        "needs sudo and a running systemd; tests/live/test_service_sandbox.py fills the unit with this "
        "recipe and runs it under the unit's own restrictions"
    ),
}
BLOCKS = readme_blocks()


def entries(block: Block) -> list[tuple[str, str]]:
    """The entries of RUNNERS and SKIPPED that name ``block``."""
    return [
        entry
        for entry in [*RUNNERS, *SKIPPED]
        if entry[0] == block.section and block.first_line.startswith(entry[1])
    ]


def test_every_block_is_run_or_skipped_for_a_reason() -> None:
    named = {block.line: entries(block) for block in BLOCKS}
    unknown = [f"README.md:{b.line} ({b.section}): {b.first_line}" for b in BLOCKS if len(named[b.line]) != 1]
    assert not unknown, "README blocks not named by exactly one entry here:\n" + "\n".join(unknown)
    used = {entry for found in named.values() for entry in found}
    assert used == set(RUNNERS) | set(SKIPPED), "entries for blocks the README no longer has"


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if any(e in RUNNERS for e in entries(b))], ids=lambda b: f"line{b.line}"
)
def test_readme_block_runs_as_written(block: Block, site: Site, tmp_path: Path) -> None:
    [entry] = entries(block)
    RUNNERS[entry](block, site, tmp_path)
