"""Realtime vs BASR: how long after the end of speech the text arrives, on
``/v1/realtime`` and on ``/ws/transcribe``, side by side against one server.

Each round replays the same phrase (the project's own 8 s clip) at real-time
pace, 100 ms per message, in three ways, one after the other:

* ``basr``      — ``/ws/transcribe``: stop sent at the end of the audio → ``final``
  (partials off, as Realtime decodes none; ``--partials`` turns them on);
* ``rt-commit`` — ``/v1/realtime`` with ``turn_detection: null``: commit sent
  at the end of the audio → ``completed`` (the like-for-like pair: target
  within 10 % of ``basr``);
* ``rt-vad``    — ``/v1/realtime`` with ``server_vad`` (500 ms silence): the
  phrase then silence; end of speech → ``completed``, split into end of speech
  → ``committed`` (the turn detector's wait, about ``silence_duration_ms``) and
  ``committed`` → ``completed`` (the final decode, comparable to ``basr``).

    .venv-cuda/bin/python -m bench.realtime_bench                 # CUDA engine (CPU here)
    .venv-mlx/bin/python -m bench.realtime_bench --backend mlx
    .venv-cuda/bin/python -m bench.realtime_bench --rounds 10 --sessions 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from bench.bench_env import add_model_flags, bench_workspace
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import BACKEND, LiveServer

FRAME = 3200  # 100 ms of PCM16 at 16 kHz
COMPLETED = "conversation.item.input_audio_transcription.completed"
Timings = dict[str, float]


async def pace(send: Callable[[bytes], Awaitable[None]], pcm: bytes, speed: float) -> float:
    """Send ``pcm`` in 100 ms pieces at ``speed`` x real time; when the last one went."""
    began = time.perf_counter()
    for i, at in enumerate(range(0, len(pcm), FRAME)):
        await asyncio.sleep(max(0.0, began + i * 0.1 / speed - time.perf_counter()))
        await send(pcm[at : at + FRAME])
    return time.perf_counter()


async def basr(url: str, sid: str, pcm: bytes, speed: float) -> Timings:
    async with connect(f"{url}/ws/transcribe", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": sid}))
        seq = iter(range(1 << 30))

        async def frame(piece: bytes) -> None:
            await ws.send(build_frame(next(seq), piece))

        reader = asyncio.create_task(_until(ws, "final"))
        end = await pace(frame, pcm, speed)
        await ws.send(json.dumps({"type": "stop", "stopId": f"{sid}-stop"}))
        seen = await reader
    return {"end→text": seen["final"] - end}


async def realtime(url: str, pcm: bytes, speed: float, vad: bool, silence: bytes) -> Timings:
    async with connect(f"{url}/v1/realtime?model=bench", max_size=None) as ws:
        turn = {"type": "server_vad", "silence_duration_ms": 500} if vad else None
        audio_input = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": turn}
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": audio_input}}}))
        reader = asyncio.create_task(_until(ws, COMPLETED))

        async def append(piece: bytes) -> None:
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()})
            )

        end = await pace(append, pcm, speed)
        if vad:
            await pace(append, silence, speed)
        else:
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        seen = await reader
    timings = {"end→text": seen[COMPLETED] - end}
    if vad:
        committed = seen["input_audio_buffer.committed"]
        timings |= {"end→committed": committed - end, "committed→text": seen[COMPLETED] - committed}
    return timings


async def _until(ws: ClientConnection, last: str) -> dict[str, float]:
    """When each message type was first seen, up to ``last``."""
    seen: dict[str, float] = {}
    async for raw in ws:
        kind = json.loads(raw)["type"]
        seen.setdefault(kind, time.perf_counter())
        if kind in ("error", "stopExpired") or kind.endswith(".failed"):
            raise RuntimeError(raw)
        if kind == last:
            return seen
    raise RuntimeError(f"closed before {last}")


async def rounds(url: str, args: argparse.Namespace) -> dict[str, list[Timings]]:
    clip = speech("voice_a")
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
    silence = bytes(2 * 16_000 * 2)
    modes: dict[str, Callable[[int], Awaitable[Timings]]] = {
        "basr": lambda i: basr(url, f"bench-{i}-{time.monotonic_ns()}", pcm, args.speed),
        "rt-commit": lambda i: realtime(url, pcm, args.speed, False, silence),
        "rt-vad": lambda i: realtime(url, pcm, args.speed, True, silence),
    }
    results: dict[str, list[Timings]] = {mode: [] for mode in modes}
    for round_no in range(args.rounds + 1):  # round 0 warms up (VAD, speaker encoder, first decode)
        for mode, run in modes.items():
            done = await asyncio.gather(*(run(round_no * 100 + s) for s in range(args.sessions)))
            if round_no:
                results[mode].extend(done)
    return results


def report(results: dict[str, list[Timings]]) -> None:
    medians: dict[str, float] = {}
    for mode, runs in results.items():
        for key in runs[0]:
            values = sorted(run[key] for run in runs)
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            median = statistics.median(values)
            medians[f"{mode} {key}"] = median
            print(f"{mode:10s} {key:16s} p50 {median:6.3f} s   p95 {p95:6.3f} s   (n={len(values)})")
    basr_text = medians["basr end→text"]
    ratios = [
        ("rt-commit end→text", "target 0.9-1.1"),
        ("rt-vad committed→text", "the decode after the turn's commit"),
        ("rt-vad end→text", "includes the 500 ms of silence that ends a turn"),
    ]
    for key, note in ratios:
        print(f"{key} / basr end→text = {medians[key] / basr_text:.2f}  ({note})")


async def main_async(args: argparse.Namespace) -> None:
    work, env = bench_workspace(
        args,
        "polyasr-realtime-bench-",
        POLYASR_TOKENS_PER_AUDIO_SEC=str(args.tokens_per_sec),
        POLYASR_PARTIALS_ENABLED="1" if args.partials else "0",
    )
    server = LiveServer(args.backend, env, work / "server.log")
    server.wait_ready()
    print(
        f"backend={args.backend} model={env['POLYASR_MODEL']} {args.sessions} concurrent session(s), "
        f"{args.rounds} rounds, {args.speed:g}x real time, "
        f"token budget {args.tokens_per_sec:g}/audio-second, BASR partials {'on' if args.partials else 'off'}"
    )
    try:
        report(await rounds(server.url.replace("http", "ws"), args))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions per mode")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed, x real time (default 1)")
    parser.add_argument("--tokens-per-sec", type=float, default=6.0, help="POLYASR_TOKENS_PER_AUDIO_SEC")
    parser.add_argument(
        "--partials",
        action="store_true",
        help="BASR partials on (Realtime decodes none): shows what a partial in flight at the stop costs",
    )
    add_model_flags(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
