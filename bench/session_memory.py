"""Memory of one long dictation: a session must keep only what it still needs.

One session streams an hour of speech with natural pauses (the project's own
clip, 1 s gaps) to a real server process as fast as the server recognizes it
(many times real time: the sender only waits when the stable prefix falls more
than two commits behind, read from the session's archived events, so what is
measured is what a session keeps, not a backlog of undecoded audio), and the
server's resident memory (VmRSS) is sampled as the audio goes in: at each mark
the lowest of a second's samples, what the process keeps between one decode's
working set and the next. The target: RSS after 1 h of dictation ≤ 1.1 × RSS
after 1 min. At the end
the session is stopped and the final's latency printed.

    .venv-cuda/bin/python -m bench.session_memory                 # CUDA engine (CPU here)
    .venv-mlx/bin/python -m bench.session_memory --backend mlx
    .venv-cuda/bin/python -m bench.session_memory --minutes 60 --frame-sec 1.0

With no ``--model`` the tiny random-weight checkpoints of the test suite are
used: text is gibberish, but every part of the pipeline (archive, VAD, speaker
filter, stable-prefix commits) runs on every second of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from bench.bench_env import add_model_flags, bench_workspace
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import BACKEND, LiveServer

IN_FLIGHT = 8  # frames sent ahead of their acks
COMMIT_MIN_SEC = 8.0  # the server's STABLE_COMMIT_MIN_SEC (its default)


def stable_sec(logs: Path) -> float:
    """How far the session's stable prefix reaches, from its archived events."""
    reach = 0.0
    for path in (logs / "sessions").glob("*/*/events.jsonl"):
        for line in path.read_text().splitlines():
            if '"stable_prefix_committed"' in line:
                reach = max(reach, json.loads(line)["stable_sec"])
    return reach


async def keep_up(logs: Path, heard_sec: float) -> float:
    """Wait while recognition is more than two commits behind; the seconds waited."""
    began = time.monotonic()
    while heard_sec - stable_sec(logs) > 2 * COMMIT_MIN_SEC + 10:
        await asyncio.sleep(0.5)
    return time.monotonic() - began


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def resident_floor_mb(pid: int, seconds: float = 1.0) -> float:
    """The lowest RSS over ``seconds``: a decode running at the sampled instant
    would add its transient working set, not what the session keeps."""
    lowest = rss_mb(pid)
    for _ in range(int(seconds / 0.05)):
        await asyncio.sleep(0.05)
        lowest = min(lowest, rss_mb(pid))
    return lowest


def speech_loop(frame_sec: float) -> list[bytes]:
    """One pass of the clip plus a 1 s pause, cut into PCM16 frames."""
    clip = np.concatenate([speech("voice_a"), np.zeros(16000, np.float32)])
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
    size = int(frame_sec * 16000) * 2
    usable = len(pcm) // size * size
    return [pcm[i : i + size] for i in range(0, usable, size)]


async def dictate(url: str, pid: int, logs: Path, minutes: float, frame_sec: float) -> dict[str, float]:
    loop = speech_loop(frame_sec)
    total = int(minutes * 60 / frame_sec)
    marks = {int(60 / frame_sec): "1 min", total: f"{minutes:g} min"}
    marks.update({int(m * 60 / frame_sec): f"{m} min" for m in (5, 15, 30) if m < minutes})
    samples: dict[str, float] = {}
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": "long"}))
        assert json.loads(await ws.recv())["type"] == "started"
        acked = -1
        began = time.monotonic()
        for seq in range(total):
            await ws.send(build_frame(seq, loop[seq % len(loop)]))
            while seq - acked >= IN_FLIGHT or (seq + 1 in marks and acked < seq):
                message = json.loads(await ws.recv())
                if message["type"] == "ack":
                    acked = message["ackSeq"]
                elif message["type"] == "error":
                    raise RuntimeError(message)
            if (seq + 1) % int(COMMIT_MIN_SEC / frame_sec) == 0:
                await keep_up(logs, (seq + 1) * frame_sec)
            if seq + 1 in marks:
                mark = marks[seq + 1]
                samples[mark] = await resident_floor_mb(pid)
                elapsed = time.monotonic() - began
                print(f"  {mark:>7} of audio in {elapsed:6.1f} s: RSS {samples[mark]:.0f} MB")
        stopped = time.monotonic()
        await ws.send(json.dumps({"type": "stop", "stopId": "end", "finalCapturedSeq": total}))
        while (message := json.loads(await ws.recv()))["type"] != "final":
            pass
        samples["final_latency_s"] = time.monotonic() - stopped
        samples["covered"] = float(message.get("recognizedThroughSeq") == total)
    return samples


async def main_async(args: argparse.Namespace) -> None:
    work, env = bench_workspace(
        args,
        "session-memory-",
        POLYASR_PARTIALS_ENABLED="0",
        POLYASR_STABLE_COMMIT_MIN_SEC=str(COMMIT_MIN_SEC),
        # Gibberish from random weights runs to the token budget: a small one keeps an hour
        # of commits within minutes on a CPU without changing what the session holds.
        POLYASR_MAX_NEW_TOKENS=str(args.max_new_tokens),
        POLYASR_MIN_NEW_TOKENS=str(min(8, args.max_new_tokens)),
        POLYASR_SESSION_IDLE_SEC="600",  # the sender may wait for recognition to catch up
    )
    server = LiveServer(args.backend, env, work / "server.log")
    try:
        server.wait_ready()
        url = server.url.replace("http", "ws") + "/ws/transcribe"
        print(f"backend={args.backend} {args.minutes:g} min of audio in {args.frame_sec:g} s frames")
        print(f"  idle server: RSS {rss_mb(server.proc.pid):.0f} MB")
        samples = await dictate(url, server.proc.pid, work / "logs", args.minutes, args.frame_sec)
    finally:
        server.stop()
    first, last = samples["1 min"], samples[f"{args.minutes:g} min"]
    ratio = last / first
    print(f"final after stop: {samples['final_latency_s']:.2f} s, covered: {bool(samples['covered'])}")
    print(f"RSS {args.minutes:g} min / 1 min = {last:.0f} / {first:.0f} MB = {ratio:.3f} (target ≤ 1.1)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default=BACKEND, choices=["mlx", "cuda"])
    parser.add_argument("--minutes", type=float, default=60.0, help="audio to dictate (default 60)")
    parser.add_argument("--frame-sec", type=float, default=1.0, help="audio per frame (default 1 s)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="decode budget (default 16)")
    add_model_flags(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
