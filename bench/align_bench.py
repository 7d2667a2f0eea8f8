"""Forced alignment end to end: throughput, peak memory, and what co-loading costs.

A synthetic input of ``--minutes`` (espeak speech from tests/data with short
noisy pauses) is POSTed to ``/v1/align`` of the app in this process, so every
step runs: PyAV decode, the VAD chunk plan, the ASR pass on the ``asr`` unit,
the aligner pass on the ``align`` unit, grouping and stitching. Two runs:
``asr+align`` (no ``text``: transcribe, then align) and ``align only`` (a
given transcript). Each prints audio-seconds aligned per wall-clock second.

Peak memory is the process's resident-set high-water mark (``ru_maxrss``), and
on MLX also MLX's own peak; with a CUDA device, the torch allocator's peak.

On the CUDA backend it also prints the resident parameter memory of the two
units: ``asr`` + ``align`` as this service holds them (the align unit holds
only the forced aligner and borrows ``asr``), against upstream's layout where
the align unit carried a second full ASR model (2 x asr + aligner). Measured
as the parameter and buffer bytes of the models actually loaded (tiny
checkpoints here, so the absolute numbers are small), and computed from the
architectures for the real Qwen3-ASR-1.7B + Qwen3-ForcedAligner-0.6B in bf16.

    .venv-cuda/bin/python -m bench.align_bench            # CUDA engine (on CPU here)
    .venv-mlx/bin/python -m bench.align_bench --backend mlx --minutes 3
    .venv-cuda/bin/python -m bench.align_bench --model ASR_DIR --aligner ALIGNER_DIR   # on POLYASR_DEVICE

Random weights make the text gibberish and generation always runs to its
token budget, so the ASR share of the time is an upper bound.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from bench.bench_env import add_model_flags, bench_env
from polyasr.api.app import create_app
from polyasr.core.config import load_settings
from tests.audio_util import speech, wav_bytes
from tests.conftest import BACKEND, engine_class
from tests.fixtures.tiny_models import (
    FULL_0_6B,
    FULL_1_7B,
    build_tiny_models,
    expected_parameter_shapes,
)

SR = 16_000
GIB = 1024**3


def synthetic_input(minutes: float) -> np.ndarray:
    """Speech clips separated by 0.6 s of faint noise, ``minutes`` long."""
    rng = np.random.default_rng(11)
    clips = [speech("voice_a"), speech("voice_b")]
    parts, total, k = [], 0, 0
    while total < minutes * 60 * SR:
        pause = (rng.standard_normal(int(0.6 * SR)) * 0.005).astype(np.float32)
        parts += [clips[k % 2], pause]
        total += len(clips[k % 2]) + len(pause)
        k += 1
    return np.concatenate(parts)[: int(minutes * 60 * SR)]


def transcript_for(seconds: float) -> str:
    """About 2.5 words a second, in sentences of ten words."""
    words = [f"word{i % 50}" for i in range(int(seconds * 2.5))]
    return " ".join(w + ("." if (i + 1) % 10 == 0 else "") for i, w in enumerate(words))


def peak_memory_lines(backend: str) -> list[str]:
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    lines = [f"peak RSS (process)      : {rss_mib:,.0f} MiB"]
    if backend == "mlx":
        import mlx.core as mx

        lines.append(f"peak MLX memory         : {mx.get_peak_memory() / 1_048_576:,.1f} MiB")
    else:
        import torch

        if torch.cuda.is_available():
            allocated = torch.cuda.max_memory_allocated() / 1_048_576
            lines.append(f"peak CUDA allocated     : {allocated:,.1f} MiB")
    return lines


def torch_bytes(module: Any) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def full_size_bytes(spec: Any, aligner: bool, bytes_per_param: int = 2) -> int:
    shapes = expected_parameter_shapes(spec, aligner).values()
    return bytes_per_param * sum(math.prod(shape) for shape in shapes)


def coload_lines(engine: Any) -> list[str]:
    """Resident parameter bytes: this design vs a second ASR copy in ``align``."""
    asr = torch_bytes(engine.load("asr").model)
    aligner = torch_bytes(engine.load("align").model)
    full_asr, full_aligner = full_size_bytes(FULL_1_7B, False), full_size_bytes(FULL_0_6B, True)
    rows = [
        ("loaded tiny checkpoints", asr, aligner, 1_048_576, "MiB"),
        ("1.7B ASR + 0.6B aligner, bf16 (computed)", full_asr, full_aligner, GIB, "GiB"),
    ]
    lines = ["co-resident parameter memory, asr + align (this design) vs 2 x asr + aligner (upstream):"]
    for label, a, b, unit, name in rows:
        ours, old = a + b, 2 * a + b
        lines.append(
            f"  {label:42s}: {ours / unit:8.2f} {name} vs {old / unit:8.2f} {name}  ratio {ours / old:.3f}"
        )
    return lines


def timed_align(client: TestClient, upload: bytes, **form: str) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    response = client.post("/v1/align", files={"file": ("bench.wav", upload)}, data=form)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-chunk-seconds", type=int, default=270)
    add_model_flags(parser)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="polyasr-align-bench-"))
    tiny = build_tiny_models(work / "tiny")
    env = bench_env(
        tiny, args, POLYASR_LOG_DIR="", POLYASR_STREAMING_PROBE="0", POLYASR_IDLE_EVICT_SECONDS="0"
    )
    settings = load_settings(args.backend, {**os.environ, **env})
    engine = engine_class(args.backend)(settings)

    audio = synthetic_input(args.minutes)
    seconds = len(audio) / SR
    upload = wav_bytes(audio)
    chunk = str(args.max_chunk_seconds)
    print(f"backend={args.backend} input={seconds:.0f} s ({seconds / 60:.1f} min) max_chunk_seconds={chunk}")
    with TestClient(
        create_app(engine, settings, base_dir=work), base_url="http://127.0.0.1", client=("127.0.0.1", 50000)
    ) as client:
        post_small = wav_bytes(audio[: 2 * SR])
        client.post("/v1/align", files={"file": ("w.wav", post_small)}, data={"language": "en"})  # warm-up
        elapsed, body = timed_align(client, upload, language="en", max_chunk_seconds=chunk)
        words = sum(len(s["words"]) for s in body["segments"])
        print(
            f"asr+align  : {elapsed:7.1f} s  {seconds / elapsed:8.1f} audio-s/s  "
            f"({len(body['segments'])} segments, {words} words)"
        )
        text = transcript_for(seconds)
        elapsed, body = timed_align(client, upload, language="en", max_chunk_seconds=chunk, text=text)
        words = sum(len(s["words"]) for s in body["segments"])
        print(
            f"align only : {elapsed:7.1f} s  {seconds / elapsed:8.1f} audio-s/s  "
            f"({len(body['segments'])} segments, {words} words)"
        )
    for line in peak_memory_lines(args.backend):
        print(line)
    if args.backend == "cuda":
        for line in coload_lines(engine):
            print(line)


if __name__ == "__main__":
    main()
