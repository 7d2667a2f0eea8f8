"""The server environment a bench runs with: tiny checkpoints on the CPU by
default, and a real checkpoint where the user's environment (or flags) says.

The test fixture's ``tiny_env`` pins ``POLYASR_DEVICE=cpu`` and
``POLYASR_DTYPE=float32`` so the suite runs anywhere; a bench given
``--model`` must not inherit that, or a GPU checkpoint silently runs on the CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tests.conftest import tiny_env
from tests.fixtures.tiny_models import TinyModels, build_tiny_models

PLACEMENT = ("POLYASR_DEVICE", "POLYASR_DTYPE")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="ASR checkpoint dir (default: tiny random weights)")
    parser.add_argument("--aligner", help="forced-aligner checkpoint dir (default: tiny random weights)")
    parser.add_argument("--device", help="POLYASR_DEVICE (default: the environment's, else cpu for tiny)")
    parser.add_argument("--dtype", help="POLYASR_DTYPE (default: the environment's, else float32 for tiny)")


def bench_env(tiny: TinyModels, args: argparse.Namespace, **extra: str) -> dict[str, str]:
    """``tiny_env`` with ``--model``/``--aligner`` swapped in; with a real
    checkpoint, device and dtype come from the flags, else the environment."""
    models = TinyModels(
        asr=Path(args.model) if args.model else tiny.asr,
        aligner=Path(args.aligner) if args.aligner else tiny.aligner,
    )
    env = tiny_env(models, **extra)
    if args.model:
        for var in PLACEMENT:
            env.pop(var)
            if var in os.environ:
                env[var] = os.environ[var]
    for var, value in zip(PLACEMENT, (args.device, args.dtype), strict=True):
        if value:
            env[var] = value
    return env


def bench_workspace(args: argparse.Namespace, prefix: str, **extra: str) -> tuple[Path, dict[str, str]]:
    """A fresh folder holding the tiny checkpoints, and the :func:`bench_env`
    of a server archiving under its ``logs`` (``POLYASR_LOG_DIR`` in ``extra`` wins)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = bench_env(
        build_tiny_models(work / "tiny"), args, **{"POLYASR_LOG_DIR": str(work / "logs"), **extra}
    )
    return work, env
