"""glibc keeps large buffers in their own mappings once the CUDA entry point
says so: buffers freed between blocks that outlive them go back to the system
instead of staying resident in the heap (what made a long dictation grow).
Each case runs in a fresh interpreter, as the server does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from polyasr.core.allocator import keep_large_buffers_mapped
from tests.conftest import REPO

# 1 MB buffers alive together, each followed by a smaller block that outlives
# them (an audio window and the state kept beside it), then the buffers freed.
PATTERN = """
import sys, numpy as np, psutil
from polyasr.core.allocator import keep_large_buffers_mapped
print(keep_large_buffers_mapped() if sys.argv[1] == "fixed" else False)
process = psutil.Process()
big = np.ones(8 << 20, np.uint8)
del big  # a large block freed: by default glibc's threshold rises to its size
before = process.memory_info().rss
buffers, kept = [], []
for _ in range(100):
    buffers.append(np.ones(1 << 20, np.uint8))
    kept.append(bytearray(200_000))
del buffers
print((process.memory_info().rss - before) >> 20)
"""


def retained_mb(mode: str) -> tuple[bool, int]:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_MMAP_THRESHOLD_"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", PATTERN, mode], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_large_buffers_go_back_to_the_system() -> None:
    set_, fixed = retained_mb("fixed")
    assert set_
    _, default = retained_mb("default")
    assert default > 80  # 100 MB of freed buffers stay resident in the heap
    assert fixed < 40  # only the 20 MB still in use


def test_an_operators_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_large_buffers_mapped() is False
