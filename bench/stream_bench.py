"""Dictation latency under load: concurrent sessions over real sockets.

N sessions replay speech at real-time pace (100 ms frames) to a real server
process and stop; for each utterance length the script prints time to first
partial, final-after-stop latency (p50/p95), partial decodes per session, and
the ratio final-latency(longest) ÷ final-latency(shortest) — flat cost means
a ratio near 1 (target ≤ 1.5). It also runs the same lengths with a single
session, so the side-by-side ratio (N sessions ÷ 1 session) shows whether a
final waits behind other sessions' partials (the scheduler runs finals first).

Every configuration runs without and with ``"words": true`` in turns
(``--repeats`` rounds; the final's words, timed by the forced aligner, follow
it in a ``words`` message): the script prints stop-to-final with words,
stop-to-words, and the ratio final-latency with words ÷ without, side by
side — the words must not slow the final (a ratio near 1).

    .venv-cuda/bin/python -m bench.stream_bench                  # CUDA engine (CPU here)
    .venv-mlx/bin/python -m bench.stream_bench --backend mlx
    .venv-cuda/bin/python -m bench.stream_bench --sessions 8 --lengths 5,30,120

With no ``--model`` the tiny random-weight checkpoints of the test suite are
used: their text is gibberish, but every decode runs to its token budget, so
decode cost follows audio length the way real speech does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from bench.bench_env import add_model_flags, bench_workspace
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import BACKEND, LiveServer

FRAME_SEC = 0.1


@dataclass
class Run:
    sid: str
    first_partial: float | None = None
    final_latency: float | None = None
    words_latency: float | None = None  # stop → the words message, when asked for
    words: int | None = None  # how many words came (None: a reason came instead)
    partials: int = 0
    text: str = ""
    errors: list[str] = field(default_factory=list)


def utterance(seconds: float) -> bytes:
    """Speech with natural pauses (the project's own clip, 1 s gaps), PCM16LE."""
    clip = np.concatenate([speech("voice_a"), np.zeros(16000, np.float32)])
    audio = np.tile(clip, int(seconds // (len(clip) / 16000)) + 1)[: int(seconds * 16000)]
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def dictate(
    url: str, sid: str, pcm: bytes, delay: float, speed: float = 1.0, words: bool = False
) -> Run:
    """One session: replay ``pcm`` in 100 ms frames at ``speed`` x real time, stop, await
    the final (and, with ``words``, the words message after it)."""
    run = Run(sid)
    await asyncio.sleep(delay)
    frame_bytes = int(FRAME_SEC * 32000)
    count = len(pcm) // frame_bytes
    async with connect(url, max_size=None) as ws:
        start = {"type": "start", "protocol": 1, "control": 2, "sessionId": sid, "language": "en"}
        await ws.send(json.dumps({**start, "words": True} if words else start))
        began = time.perf_counter()
        stop_sent = 0.0
        final_seen = asyncio.Event()
        answered = asyncio.Event()  # final (and words) in

        async def reader() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "partial" and run.first_partial is None:
                    run.first_partial = time.perf_counter() - began
                elif msg["type"] == "final":
                    run.final_latency = time.perf_counter() - stop_sent
                    run.text = msg["text"]
                    if msg.get("recognizedThroughSeq") != count:
                        run.errors.append(f"coverage {msg.get('recognizedThroughSeq')} != {count}")
                    final_seen.set()
                    if not words:
                        answered.set()
                elif msg["type"] == "words":
                    run.words_latency = time.perf_counter() - stop_sent
                    run.words = len(msg["words"]) if "words" in msg else None
                    if "words" not in msg:
                        run.errors.append(f"no words: {msg.get('reason')}")
                    answered.set()
                elif msg["type"] in ("error", "stopExpired"):
                    run.errors.append(str(msg))
                    final_seen.set()
                    answered.set()

        task = asyncio.create_task(reader())
        for seq in range(count):
            target = began + seq * FRAME_SEC / speed
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
            await ws.send(build_frame(seq, pcm[seq * frame_bytes : (seq + 1) * frame_bytes]))
        stop_sent = time.perf_counter()
        await ws.send(json.dumps({"type": "stop", "stopId": f"{sid}-stop", "finalCapturedSeq": count}))
        await asyncio.wait_for(answered.wait(), 600)
        task.cancel()
    return run


def partial_decodes(logs: Path) -> dict[str, int]:
    """Partial decodes per client session id, from the server's session archive."""
    counts: dict[str, int] = {}
    for path in logs.glob("sessions/*/*/events.jsonl"):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        sid = next((e["session_id"] for e in events if e["type"] == "protocol_started"), None)
        if sid is not None:
            counts[sid] = counts.get(sid, 0) + sum(e["type"] == "partial_done" for e in events)
    return counts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    url: str, sessions: int, seconds: float, tag: str, speed: float = 1.0, words: bool = False
) -> list[Run]:
    pcm = utterance(seconds)
    jitter = random.Random(seconds)
    return await asyncio.gather(
        *(
            dictate(url, f"{tag}-{seconds:g}-{i}", pcm, jitter.uniform(0, 1.0), speed, words)
            for i in range(sessions)
        )
    )


def report(label: str, runs: list[Run], decodes: dict[str, int]) -> float:
    finals = [r.final_latency for r in runs if r.final_latency is not None]
    firsts = [r.first_partial for r in runs if r.first_partial is not None]
    per_session = statistics.mean(decodes.get(r.sid, 0) for r in runs)
    errors = sum(len(r.errors) for r in runs)
    first = f"{statistics.median(firsts):6.2f}" if firsts else "   n/a"
    timed = [r.words_latency for r in runs if r.words_latency is not None]
    words = f" | words after stop p50 {pct(timed, 0.5):6.3f} s p95 {pct(timed, 0.95):6.3f} s" if timed else ""
    # The median covers only sessions that saw a partial: say how many did not.
    print(
        f"{label:<22} first partial {first} s (none: {len(runs) - len(firsts)}/{len(runs)}) | "
        f"final after stop p50 {pct(finals, 0.5):6.3f} s p95 {pct(finals, 0.95):6.3f} s{words} | "
        f"partial decodes/session {per_session:5.1f} | errors {errors}"
    )
    return pct(finals, 0.5)


async def main_async(args: argparse.Namespace) -> None:
    work, env = bench_workspace(
        args,
        "polyasr-stream-bench-",
        POLYASR_PARTIALS_ENABLED="1",
        POLYASR_TOKENS_PER_AUDIO_SEC=str(args.tokens_per_sec),
    )
    server = LiveServer(args.backend, env, work / "server.log")
    server.wait_ready()
    url = server.url.replace("http", "ws") + "/ws/transcribe"
    lengths = [float(x) for x in args.lengths.split(",")]
    print(
        f"backend={args.backend} model={env['POLYASR_MODEL']} {args.speed:g}x real-time replay, "
        "100 ms frames, "
        f"token budget {args.tokens_per_sec:g}/audio-second"
    )
    try:
        await measure(
            url, 1, 3.0, "warm-up"
        )  # first-call costs (VAD, speaker encoder) stay out of the figures
        medians: dict[tuple[int, float, bool], float] = {}
        for sessions in sorted({1, args.sessions}):
            for seconds in lengths:
                # Without and with words in turns, so a change in the machine's load weighs on both.
                runs: dict[bool, list[Run]] = {False: [], True: []}
                for round_ in range(args.repeats):
                    for words in (False, True):
                        tag = f"n{sessions}{'w' if words else ''}r{round_}"
                        runs[words] += await measure(url, sessions, seconds, tag, args.speed, words)
                for words in (False, True):
                    label = f"{sessions} x {seconds:g} s{' words' if words else ''}"
                    medians[(sessions, seconds, words)] = report(
                        label, runs[words], partial_decodes(work / "logs")
                    )
        for sessions in sorted({1, args.sessions}):
            ratio = medians[(sessions, lengths[-1], False)] / medians[(sessions, lengths[0], False)]
            print(
                f"{sessions} session(s): final-latency({lengths[-1]:g} s) / final-latency({lengths[0]:g} s) "
                f"= {ratio:.2f}  (target <= 1.5)"
            )
        if args.sessions > 1:
            for seconds in lengths:
                ratio = medians[(args.sessions, seconds, False)] / medians[(1, seconds, False)]
                print(f"{seconds:g} s: final latency with {args.sessions} sessions / 1 session = {ratio:.2f}")
        for sessions in sorted({1, args.sessions}):
            for seconds in lengths:
                ratio = medians[(sessions, seconds, True)] / medians[(sessions, seconds, False)]
                print(
                    f"{sessions} x {seconds:g} s: final latency with words / without = {ratio:.2f}"
                    "  (the words must not slow the final: ~1)"
                )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--lengths", default="5,30,120")
    add_model_flags(parser)
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed, x real time (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of each configuration, without and with words in turns"
    )
    parser.add_argument(
        "--tokens-per-sec",
        type=float,
        default=25.0,
        help="POLYASR_TOKENS_PER_AUDIO_SEC for the server. Random weights always write out their "
        "whole budget; ~6 makes them cost what real speech (3-5 tokens/s) does.",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
