"""Service templates: every placeholder is filled by the README recipe, and the
launchd template is a valid plist once filled."""

from __future__ import annotations

import plistlib
import re

from tests.conftest import REPO

VALUES = {
    "__REPO__": "/opt/polyasr",
    "__VENV__": "/opt/polyasr/.venv-mlx",
    "__USER__": "asr",
    "__GROUP__": "asr",
    "__HF_HOME__": "/var/lib/polyasr/hf",
    "__LOG_DIR__": "/var/log/polyasr",
}


def fill(text: str) -> str:
    for key, value in VALUES.items():
        text = text.replace(key, value)
    assert not re.search(r"__[A-Z_]+__", text), "unfilled placeholder"
    return text


def test_launchd_plist() -> None:
    raw = (REPO / "launchd" / "io.zigzag.polyasr.plist.template").read_text()
    plist = plistlib.loads(fill(raw).encode())
    assert plist["Label"] == "io.zigzag.polyasr"
    assert plist["ProgramArguments"] == ["/opt/polyasr/.venv-mlx/bin/python", "/opt/polyasr/server.py"]
    assert plist["KeepAlive"] is True and plist["ThrottleInterval"] == 10
    assert plist["EnvironmentVariables"]["POLYASR_LOG_DIR"] == "/var/log/polyasr"


def test_systemd_unit() -> None:
    unit = fill((REPO / "deploy" / "polyasr.service.template").read_text())
    assert "ExecStart=/opt/polyasr/.venv-mlx/bin/python /opt/polyasr/cuda/server.py" in unit
    for line in ("Restart=on-failure", "NoNewPrivileges=true", "PrivateTmp=true", "User=asr"):
        assert line in unit
