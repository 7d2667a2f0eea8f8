"""One real server process for the client's end-to-end and CLI tests.

It runs this suite's engine on the tiny checkpoints with partials on (fast,
so a short dictation shows some), session archives on (the tests read what
the server received from them) and a small upload limit (so 413 is cheap).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.audio_util import speech
from tests.conftest import LiveServer, serving

MAX_UPLOAD_MB = 0.5


@pytest.fixture(scope="session")
def asr_server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(
        backend,
        tiny,
        tmp_path_factory.mktemp("client-logs"),
        POLYASR_PARTIALS_ENABLED="1",
        POLYASR_PARTIAL_INTERVAL_SEC="0.2",
        POLYASR_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def speech_pcm() -> bytes:
    """voice_a and a second of silence, as the PCM16LE the socket takes."""
    samples = np.concatenate([speech("voice_a"), np.zeros(16000, np.float32)])
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
