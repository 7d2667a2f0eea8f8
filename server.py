"""polyasr on Apple Silicon / MLX: the entry point, on port 8765.

``python server.py`` serves the contract with the MLX engine
(:mod:`polyasr.engines.mlx`: mlx-qwen3-asr for transcription, mlx-audio's
forced aligner). On Linux the CPU build of MLX runs the same code, which is how
the test suite exercises this backend without a Mac. Archives go under
``logs/`` beside this file unless ``POLYASR_LOG_DIR`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from polyasr.api.app import serve
from polyasr.core.config import Settings
from polyasr.core.engine import Engine


def engine(settings: Settings) -> Engine:
    """The engine, imported only now: its libraries take seconds to load, and a
    server that must refuse to start (log folder or port taken) says so first."""
    from polyasr.engines.mlx import MlxEngine

    return MlxEngine(settings)


def main() -> None:
    serve("mlx", engine, base_dir=Path(__file__).resolve().parent)


if __name__ == "__main__":
    main()
