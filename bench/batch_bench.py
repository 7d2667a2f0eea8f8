"""Server overhead of batch transcription: HTTP endpoint vs the engine directly.

The same clips are decoded, alternately, by calling the engine in this process
and by POSTing them to a real server process (``server.py`` / ``cuda/server.py``
under uvicorn on loopback). Both sides decode with the same language and token
budget, so the difference is what the service adds: upload, PyAV decoding,
scheduling, JSON. Prints audio-seconds per second for both and their ratio
(server ÷ direct); the target for 30 s clips is ≥ 0.9.

    .venv-cuda/bin/python -m bench.batch_bench            # CUDA engine (on CPU here)
    .venv-mlx/bin/python -m bench.batch_bench --backend mlx

With no ``--model`` it builds the tiny random-weight checkpoints of the test
suite (on the CPU, float32); pass ``--model DIR`` to measure a real checkpoint
on ``POLYASR_DEVICE`` / ``POLYASR_DTYPE`` (or ``--device`` / ``--dtype``).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import time

import httpx
import numpy as np

from bench.bench_env import add_model_flags, bench_workspace
from polyasr.audio.decoding import decode_audio
from polyasr.core.config import load_settings
from polyasr.core.engine import Clip
from tests.audio_util import speech, wav_bytes
from tests.conftest import BACKEND, LiveServer, engine_class


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--clip-sec", type=float, default=30.0)
    parser.add_argument("--clips", type=int, default=8)
    add_model_flags(parser)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    work, env = bench_workspace(args, "polyasr-bench-", POLYASR_LOG_DIR="", POLYASR_STREAMING_PROBE="0")
    settings = load_settings(args.backend, {**os.environ, **env})

    base = speech()
    clips = []
    rng = np.random.default_rng(7)
    for _ in range(args.clips):
        audio = np.tile(base, int(args.clip_sec // (len(base) / 16000)) + 1)[: int(args.clip_sec * 16000)]
        clips.append((audio * rng.uniform(0.6, 1.0)).astype(np.float32))
    uploads = [wav_bytes(c) for c in clips]
    # Decode exactly what the server will see (PCM16 quantized), so both sides
    # run the same samples through the model.
    clips = [decode_audio(io.BytesIO(u)) for u in uploads]

    engine = engine_class(args.backend)(settings)
    model = engine.load("asr")
    budget = settings.token_budget(args.clip_sec)
    engine.transcribe(model, [Clip(clips[0][:16000], "English", "", 8)])  # warm-up

    server = LiveServer(args.backend, env, work / "server.log")
    server.wait_ready()
    direct_times: list[float] = []
    http_times: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            post = {"language": "English", "response_format": "json"}
            http.post("/v1/audio/transcriptions", files={"file": ("w.wav", uploads[0][:40000])}, data=post)
            for clip, upload in zip(clips, uploads, strict=True):
                t0 = time.perf_counter()
                engine.transcribe(model, [Clip(clip, "English", "", budget)])
                direct_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                response = http.post("/v1/audio/transcriptions", files={"file": ("c.wav", upload)}, data=post)
                http_times.append(time.perf_counter() - t0)
                response.raise_for_status()
    finally:
        server.stop()

    # Medians: robust to another process stealing a core for one clip.
    direct_rate = args.clip_sec / statistics.median(direct_times)
    http_rate = args.clip_sec / statistics.median(http_times)
    print(
        f"backend={args.backend} model={settings.model} device={settings.device} "
        f"decode={engine.info().get('decode', '-')} clips={args.clips} x {args.clip_sec:g} s, "
        f"budget={budget} tokens, alternating direct/HTTP"
    )
    print(
        f"direct engine : {direct_rate:8.2f} audio-s/s  (median {statistics.median(direct_times):.3f} s/clip)"
    )
    print(f"HTTP endpoint : {http_rate:8.2f} audio-s/s  (median {statistics.median(http_times):.3f} s/clip)")
    print(f"ratio server/direct = {http_rate / direct_rate:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
