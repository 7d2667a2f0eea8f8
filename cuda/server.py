"""polyasr on NVIDIA CUDA: the entry point, on port 8766.

``python cuda/server.py`` serves the contract with the CUDA engine
(:mod:`polyasr.engines.cuda`: qwen-asr on torch, transformers by default, vLLM
with ``POLYASR_BACKEND=vllm``); without a GPU it runs on the CPU with
``POLYASR_DEVICE=cpu``. Archives go under ``cuda/logs/`` unless
``POLYASR_LOG_DIR`` says otherwise. The ``polyasr`` package must be installed
in the environment (``pip install -r requirements.txt`` in this folder does it).

Before anything else it keeps glibc from serving large buffers out of heaps
that never shrink (:mod:`polyasr.core.allocator`), so memory stays flat over a
long dictation.
"""

from __future__ import annotations

from pathlib import Path

from polyasr.api.app import serve
from polyasr.core.allocator import keep_large_buffers_mapped
from polyasr.core.config import Settings
from polyasr.core.engine import Engine


def engine(settings: Settings) -> Engine:
    """The engine, imported only now: its libraries take seconds to load, and a
    server that must refuse to start (log folder or port taken) says so first."""
    from polyasr.engines.cuda import CudaEngine

    return CudaEngine(settings)


def main() -> None:
    keep_large_buffers_mapped()
    serve("cuda", engine, base_dir=Path(__file__).resolve().parent)


if __name__ == "__main__":
    main()
