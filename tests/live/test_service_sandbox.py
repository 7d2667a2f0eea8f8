"""The systemd unit, run under its own file-system restrictions.

``systemd-analyze verify`` checks the unit's syntax, not whether the service
can live inside it: under ``ProtectSystem=strict`` and
``ProtectHome=read-only`` every write outside the paths the unit allows
fails, and a library that needs one (numba's cache, for librosa) stops
start-up. Here the unit is filled in by the README's own recipe, and its
``ExecStart`` runs with its ``Environment`` under bubblewrap: ``/`` bound
read-only (``ProtectSystem=strict``, which covers home too), a private
``/tmp`` and ``/var/tmp`` (``PrivateTmp=true``), writable only the
``ReadWritePaths`` and the ``CacheDirectory``, the unit's umask and a clean
environment as systemd gives one. A short dictation through it must get its
final.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import REPO, free_port
from tests.readme_blocks import section_block, shell_commands

SYSTEMD_SECTION = "As a systemd service (Linux + NVIDIA)"
# What systemd puts in a system service's environment before the unit's own.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
SPECIFIERS = {"%C": "/var/cache", "%S": "/var/lib", "%L": "/var/log"}  # system manager roots


def bwrap_unusable() -> str | None:
    """Why this machine cannot run the emulation, or None."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (make test-system-deps installs it as root)"
    if os.geteuid() != 0:
        return "bubblewrap needs root here to mount the unit's file system"
    probe = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"bubblewrap cannot make a mount namespace here: {probe.stderr.strip()}"
    return None


def seed_numba_cache(numba_cache: Path) -> None:
    """Copy into the unit's numba cache what numba already compiled for
    librosa in this environment (next to librosa's sources, where the suite's
    other servers may write), so the test does not pay the cold compile a
    real unit pays once, at its first start. Numba still needs the cache
    directory writable to use it. A layout numba no longer uses only makes
    the start cold again."""
    from numba.core.caching import _CacheLocator

    spec = importlib.util.find_spec("librosa")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for pycache in Path(root).rglob("__pycache__"):
            compiled = [*pycache.glob("*.nbi"), *pycache.glob("*.nbc")]
            if compiled:
                target = numba_cache / _CacheLocator.get_suitable_cache_subpath(str(pycache.parent / "x.py"))
                target.mkdir(parents=True, exist_ok=True)
                for path in compiled:
                    shutil.copy2(path, target / path.name)


def readme_unit(hf_home: Path, log_dir: Path) -> str:
    """The unit as the README's systemd recipe writes it, the recipe's
    /var/lib/polyasr/hf and /var/log/polyasr swapped for test folders."""
    [fill] = [c for c in shell_commands(section_block(SYSTEMD_SECTION)) if c.startswith("sed ")]
    fill = fill.split(" | ")[0]  # the recipe pipes it to sudo tee /etc/systemd/system/...
    fill = fill.replace("/var/lib/polyasr/hf", str(hf_home)).replace("/var/log/polyasr", str(log_dir))
    user = pwd.getpwuid(os.geteuid()).pw_name
    env = {**os.environ, "REPO": str(REPO), "VENV": sys.prefix, "USER": user}
    done = subprocess.run(["bash", "-c", fill], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout


def service_keys(unit: str) -> list[tuple[str, str]]:
    """The ``[Service]`` section's ``key=value`` lines, specifiers expanded."""
    keys, inside = [], False
    for raw in unit.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == "[Service]"
        elif inside and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            for specifier, root in SPECIFIERS.items():
                value = value.replace(specifier, root)
            assert "%" not in value, f"a specifier this emulation does not know: {line}"
            keys.append((key, value))
    return keys


class SandboxedUnit:
    """The unit's ExecStart under bubblewrap, restricted as the unit says."""

    def __init__(self, unit: str, scratch: Path, reads: list[Path], drop_in: dict[str, str]) -> None:
        keys = service_keys(unit)
        one = dict(keys)
        # The emulation below implements exactly these; a unit that changes
        # them must change it too.
        restrictions = (one["ProtectSystem"], one["ProtectHome"], one["PrivateTmp"])
        assert restrictions == ("strict", "read-only", "true")
        self.user = pwd.getpwnam(one["User"])
        assert self.user.pw_uid == os.geteuid(), "the recipe fills User= with the installing user"
        self.umask = int(one["UMask"], 8)
        self.exec_start = shlex.split(one["ExecStart"])
        self.cache_dir = Path("/var/cache") / one["CacheDirectory"]
        self.writable = [Path(p) for p in one["ReadWritePaths"].split()]
        for path in self.writable:  # the recipe's sudo mkdir -p
            path.mkdir(parents=True, exist_ok=True)
        # /var/cache as the unit sees it: only its own CacheDirectory, made by systemd.
        var_cache = scratch / "var-cache"
        (var_cache / one["CacheDirectory"]).mkdir(parents=True)
        self.cache_on_host = var_cache / one["CacheDirectory"]
        env = dict(value.split("=", 1) for key, value in keys if key == "Environment")
        if env.get("NUMBA_CACHE_DIR", "").startswith(f"{self.cache_dir}/"):
            seed_numba_cache(self.cache_on_host / Path(env["NUMBA_CACHE_DIR"]).relative_to(self.cache_dir))
        self.mounts = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        self.mounts += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        self.mounts += ["--ro-bind", str(var_cache), "/var/cache"]
        self.mounts += ["--bind", str(self.cache_on_host), str(self.cache_dir)]
        for path in self.writable:
            self.mounts += ["--bind", str(path), str(path)]
        for path in reads:  # what the service reads and the private /tmp would hide
            self.mounts += ["--ro-bind", str(path), str(path)]
        self.mounts += ["--chdir", one["WorkingDirectory"], "--die-with-parent", "--clearenv"]
        self.env = {
            "PATH": SYSTEMD_PATH,
            "HOME": self.user.pw_dir,
            "USER": self.user.pw_name,
            "LOGNAME": self.user.pw_name,
            "SHELL": self.user.pw_shell,
            "CACHE_DIRECTORY": str(self.cache_dir),
            **env,
            **drop_in,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, command: list[str]) -> list[str]:
        settings = [arg for name, value in self.env.items() for arg in ("--setenv", name, value)]
        return ["bwrap", *self.mounts, *settings, "--", *command]

    def run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        argv = self.argv(command)
        return subprocess.run(argv, capture_output=True, text=True, umask=self.umask, timeout=60)

    def start(self, log: Path) -> None:
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv(self.exec_start), stdout=out, stderr=subprocess.STDOUT, umask=self.umask
            )

    def stop(self) -> None:
        """SIGTERM to the service (bwrap's child), as systemctl stop sends it."""
        proc = self.proc
        assert proc is not None
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            os.kill(int(pid), signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # --die-with-parent takes the service with it
            proc.wait()


def dictate(url: str, seconds: float = 2.0) -> dict[str, Any]:
    """One short v2 dictation of speech; returns the final."""
    pcm = (np.clip(speech()[: int(16000 * seconds)], -1, 1) * 32767).astype("<i2").tobytes()
    frames = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    with connect(url.replace("http", "ws") + "/ws/transcribe") as ws:
        opening = {"type": "start", "protocol": 1, "control": 2, "sessionId": "sandbox", "language": "en"}
        ws.send(json.dumps(opening))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        for seq, frame in enumerate(frames):
            ws.send(build_frame(seq, frame))
        ws.send(json.dumps({"type": "stop", "stopId": "sandbox-stop", "finalCapturedSeq": len(frames)}))
        while (message := json.loads(ws.recv(timeout=60)))["type"] != "final":
            assert message["type"] != "error", message
        return message


@pytest.fixture
def sandboxed(backend: str, tiny: Any, tmp_path: Path) -> Iterator[tuple[SandboxedUnit, str, Path]]:
    if backend != "cuda":
        pytest.skip("the systemd unit serves the CUDA backend (cuda/server.py); MLX is deployed with launchd")
    if (why := bwrap_unusable()) is not None:
        pytest.skip(why)
    unit = readme_unit(tmp_path / "hf", tmp_path / "logs")
    port = free_port()
    drop_in = {  # what `systemctl edit polyasr` would add for this machine
        "POLYASR_MODEL": str(tiny.asr),
        "POLYASR_ALIGNER_MODEL": str(tiny.aligner),
        "POLYASR_DEVICE": "cpu",
        "POLYASR_DTYPE": "float32",
        "POLYASR_HOST": "127.0.0.1",
        "POLYASR_PORT": str(port),
        "POLYASR_SHUTDOWN_GRACE_SEC": "2",
    }
    if "PYTHONPATH" in os.environ:  # the checkout under test, where it is not the installed one
        drop_in["PYTHONPATH"] = os.environ["PYTHONPATH"]
    reads = [REPO, Path(sys.prefix), tiny.asr.parent]
    sandbox = SandboxedUnit(unit, tmp_path / "scratch", reads, drop_in)
    log = tmp_path / "service.log"
    sandbox.start(log)
    try:
        yield sandbox, f"http://127.0.0.1:{port}", log
    finally:
        sandbox.stop()


def wait_ready(sandbox: SandboxedUnit, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    assert sandbox.proc is not None
    while time.monotonic() < deadline:
        assert sandbox.proc.poll() is None, f"the service exited: {log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the service did not come up: {log.read_text()[-3000:]}")


def test_the_unit_dictates_under_its_own_restrictions(sandboxed: tuple[SandboxedUnit, str, Path]) -> None:
    sandbox, url, log = sandboxed
    # The emulation has teeth: home, the repository and the rest of the
    # system are read-only; the unit's own paths and its private /tmp are not.
    probe = 'for p in "$@"; do touch "$p/.sandbox-probe" 2>/dev/null && echo "$p"; done'
    candidates = [sandbox.user.pw_dir, str(REPO), "/usr", "/var/cache", str(sandbox.cache_dir), "/tmp"]
    candidates += [str(path) for path in sandbox.writable]
    written = sandbox.run(["sh", "-c", probe, "sh", *candidates]).stdout.split()
    assert written == [str(sandbox.cache_dir), "/tmp", *map(str, sandbox.writable)]
    for path in [sandbox.cache_on_host, *sandbox.writable]:
        (path / ".sandbox-probe").unlink()

    wait_ready(sandbox, url, log)
    final = dictate(url)
    assert final["type"] == "final" and final["text"].strip()
    text = log.read_text()
    assert "Traceback" not in text and "Read-only file system" not in text, text[-3000:]
    log_dir = Path(sandbox.env["POLYASR_LOG_DIR"])
    assert any((log_dir / "sessions").rglob("*.jsonl")), sorted(log_dir.rglob("*"))
