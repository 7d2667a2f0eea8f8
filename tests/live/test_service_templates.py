"""Service templates: every placeholder is filled by the README recipe, the
launchd template is a valid plist once filled, and the systemd unit passes
``systemd-analyze verify`` where systemd is installed."""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polyasr.core.config import load_settings
from tests.conftest import REPO

VALUES = {
    "__REPO__": "/opt/polyasr",
    "__VENV__": "/opt/polyasr/.venv-mlx",
    "__USER__": "asr",
    "__GROUP__": "asr",
    "__HF_HOME__": "/var/lib/polyasr/hf",
    "__LOG_DIR__": "/var/log/polyasr",
    "__CACHE_DIR__": "/Users/asr/Library/Caches/polyasr",
}


def fill(text: str, values: dict[str, str] = VALUES) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    assert not re.search(r"__[A-Z_]+__", text), "unfilled placeholder"
    return text


def test_launchd_plist() -> None:
    raw = (REPO / "launchd" / "io.zigzag.polyasr.plist.template").read_text()
    plist = plistlib.loads(fill(raw).encode())
    assert plist["Label"] == "io.zigzag.polyasr"
    assert plist["ProgramArguments"] == ["/opt/polyasr/.venv-mlx/bin/python", "/opt/polyasr/server.py"]
    assert plist["KeepAlive"] is True and plist["ThrottleInterval"] == 10
    env = plist["EnvironmentVariables"]
    assert env["POLYASR_LOG_DIR"] == "/var/log/polyasr"
    # library caches in one known place, never in the repository or the virtualenv
    assert env["XDG_CACHE_HOME"] == "/Users/asr/Library/Caches/polyasr"
    assert env["NUMBA_CACHE_DIR"] == "/Users/asr/Library/Caches/polyasr/numba"
    assert plist["Umask"] == 0o077  # archives readable by the user only
    assert plist["ExitTimeOut"] == 30  # drain + FLAC conversion before SIGKILL


def test_systemd_unit() -> None:
    unit = fill((REPO / "deploy" / "polyasr.service.template").read_text())
    assert "ExecStart=/opt/polyasr/.venv-mlx/bin/python /opt/polyasr/cuda/server.py" in unit
    for line in (
        "Restart=on-failure",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "ProtectSystem=strict",
        "User=asr",
        "UMask=0077",
    ):
        assert line in unit.splitlines()


def test_systemd_stop_timeout_outlasts_the_shutdown_grace() -> None:
    """systemd's SIGKILL must not cut off the drain or the archives' FLAC conversion."""
    unit = fill((REPO / "deploy" / "polyasr.service.template").read_text())
    [timeout] = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    grace = load_settings("cuda", {}).shutdown_grace_sec
    assert int(timeout) >= grace + 15


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """Filled with paths that exist here (verify checks that ExecStart is an
    executable), the unit loads without a single complaint about it."""
    values = {
        **VALUES,
        "__REPO__": str(REPO),
        "__VENV__": sys.prefix,  # this run's virtualenv: its bin/python exists
        "__USER__": "root",
        "__GROUP__": "root",
        "__HF_HOME__": str(tmp_path / "hf"),
        "__LOG_DIR__": str(tmp_path / "logs"),
    }
    unit = tmp_path / "polyasr.service"
    unit.write_text(fill((REPO / "deploy" / "polyasr.service.template").read_text(), values))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in result.stderr.splitlines() if "polyasr" in line]
    assert result.returncode == 0 and complaints == [], result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above has teeth: a misspelt key and a missing binary are reported."""
    text = (REPO / "deploy" / "polyasr.service.template").read_text()
    broken = text.replace("Restart=on-failure", "Restrat=on-failure")
    values = {**VALUES, "__VENV__": str(tmp_path / "no-venv"), "__USER__": "root", "__GROUP__": "root"}
    unit = tmp_path / "polyasr.service"
    unit.write_text(fill(broken, values))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Restrat" in result.stderr and "not executable" in result.stderr
