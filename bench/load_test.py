"""Load and crash test over loopback: are finals answered and archives complete?

Starts a real server process (tiny random-weight checkpoints unless
``--model``), then for ``--seconds`` keeps ``--sessions`` dictations (protocol
v2: start, 100 ms BASR frames of the project's own speech, stop with
``finalCapturedSeq``) and ``--uploads`` batch transcriptions running in loops.
Afterwards it checks, from the outside only:

* every stop was answered with ``final`` + ``done`` (a documented refusal such
  as ``server_busy`` is counted, not failed);
* every acknowledged frame is in the server's archive exactly once: the
  connection's folder (found by its ``protocol_started`` event) holds exactly
  the PCM of frames ``0..ackSeq``, nothing missing, nothing twice;
* peak RSS of the server (with its child processes) and latency percentiles.

Then it kills the server with SIGKILL while sessions are mid-stream, restarts
it on the same ``POLYASR_LOG_DIR`` and checks that the recovered archive
(``close`` line with ``"recovered": true``, final ``input.flac``) holds every
acknowledged frame; where the server does not recover archives it says
``recovery: NOT IMPLEMENTED/failed`` and what the raw files still hold.

With ``--hostile`` the hostile and careless clients of :mod:`bench.hostile`
(duplicate floods, Realtime chatter without audio, half-sent heads, trickled
bodies, 21 MB padded uploads, dictations sent as fast as the socket takes
them) run beside the load for the same time; the same checks must hold, each
hostile client must be ended the documented way, and no live-rot reload may
happen.

A table goes to stdout and the figures to ``bench/out/load_test-<time>.json``.
The exit status is 1 when any check failed.

    .venv-cuda/bin/python -m bench.load_test                     # 50 + 20 for 60 s
    .venv-cuda/bin/python -m bench.load_test --hostile           # the same, and hostile clients beside
    .venv-cuda/bin/python -m bench.load_test --quick             # 5 + 2 for 15 s smoke run
    .venv-mlx/bin/python -m bench.load_test --backend mlx
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.bench_env import add_model_flags, bench_workspace
from bench.hostile import hostile_failures, run_hostile
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech, wav_bytes
from tests.conftest import BACKEND, LiveServer

REPO = Path(__file__).resolve().parent.parent

FRAME_BYTES = 3200  # 100 ms of PCM16 mono at 16 kHz
STOP_TIMEOUT = 300.0  # a saturated 2-core machine answers slowly; later is a failure
REFUSALS = {"server_busy", "server_shutting_down"}  # documented, counted apart
REFUSAL_BACKOFF = 0.5  # seconds before a refused worker tries again


def speech_loop() -> bytes:
    """Both committed clips back to back as PCM16LE: each session reads its own slice."""
    audio = np.concatenate([speech("voice_a"), speech("voice_b")])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def slice_for(loop: bytes, key: int, frames: int) -> bytes:
    """``frames`` frames starting at a per-session offset, so no two sessions send the same PCM."""
    size = frames * FRAME_BYTES
    start = (key * 7919 * 2) % (len(loop) - size) // 2 * 2
    return loop[start : start + size]


@dataclass
class Dictation:
    """What one connection sent and got back."""

    sid: str
    frames: int
    pcm: bytes = field(repr=False, default=b"")
    ack_seq: int = -1
    final: dict[str, Any] | None = None
    done: bool = False
    refusal: str | None = None
    error: str | None = None
    close_code: int | None = None
    stop_latency: float | None = None
    ack_rtts: list[float] = field(default_factory=list, repr=False)
    partials: int = 0

    @property
    def answered(self) -> bool:
        """``final`` (for this stop) then ``done``."""
        return self.final is not None and self.final.get("stopId") == f"{self.sid}/stop" and self.done


class Reader:
    """Collects one connection's replies; ``ack_seq`` and events for the sender to wait on."""

    def __init__(self, ws: ClientConnection, run: Dictation) -> None:
        self.ws = ws
        self.run = run
        self.sent_at: dict[int, float] = {}
        self.opened = asyncio.Event()
        self.finished = asyncio.Event()
        self.acked = asyncio.Condition()
        self.stop_sent = 0.0

    async def read(self) -> None:
        run = self.run
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind in ("started", "resumed"):
                    self.opened.set()
                elif kind == "ack":
                    await self._ack(msg["ackSeq"])
                elif kind == "partial":
                    run.partials += 1
                elif kind == "final":
                    run.final = msg
                    run.stop_latency = time.perf_counter() - self.stop_sent
                elif kind == "done":
                    run.done = True
                elif kind == "error":
                    code = msg.get("code")
                    run.refusal, run.error = (code, None) if code in REFUSALS else (None, json.dumps(msg))
                elif kind == "stopExpired":
                    run.error = json.dumps(msg)
        except ConnectionClosed:
            pass
        finally:
            run.close_code = self.ws.close_code
            self.opened.set()
            self.finished.set()
            async with self.acked:
                self.acked.notify_all()

    async def _ack(self, ack_seq: int) -> None:
        now = time.perf_counter()
        for seq in range(self.run.ack_seq + 1, ack_seq + 1):
            if seq in self.sent_at:
                self.run.ack_rtts.append(now - self.sent_at.pop(seq))
        self.run.ack_seq = max(self.run.ack_seq, ack_seq)
        async with self.acked:
            self.acked.notify_all()


async def dictate(url: str, run: Dictation, pace: float, hold: asyncio.Event | None = None) -> Dictation:
    """One v2 dictation: start, paced frames, stop with ``finalCapturedSeq``, final + done.

    With ``hold``, no stop: the connection stays open once every frame is
    acknowledged until ``hold`` is set (the crash phase kills the server then)."""
    try:
        async with connect(url, max_size=None, open_timeout=60) as ws:
            reader = Reader(ws, run)
            task = asyncio.create_task(reader.read())
            await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": run.sid}))
            await asyncio.wait_for(reader.opened.wait(), STOP_TIMEOUT)
            for seq in range(run.frames):
                if reader.finished.is_set():
                    break
                reader.sent_at[seq] = time.perf_counter()
                await ws.send(build_frame(seq, run.pcm[seq * FRAME_BYTES : (seq + 1) * FRAME_BYTES]))
                await asyncio.sleep(pace)
            if hold is not None:
                await _await_acks(reader, run.frames - 1)
                await hold.wait()
                task.cancel()
                return run
            if not reader.finished.is_set():
                reader.stop_sent = time.perf_counter()
                await ws.send(
                    json.dumps({"type": "stop", "stopId": f"{run.sid}/stop", "finalCapturedSeq": run.frames})
                )
            await asyncio.wait_for(reader.finished.wait(), STOP_TIMEOUT)
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        run.error = run.error or f"{type(exc).__name__}: {exc}"
    return run


async def _await_acks(reader: Reader, seq: int) -> None:
    async with reader.acked:
        await asyncio.wait_for(
            reader.acked.wait_for(lambda: reader.run.ack_seq >= seq or reader.finished.is_set()), STOP_TIMEOUT
        )


async def dictation_loop(
    url: str, worker: int, deadline: float, frames: int, pace: float, loop: bytes
) -> list[Dictation]:
    runs = []
    while time.monotonic() < deadline:
        key = worker * 1000 + len(runs)
        run = Dictation(f"load-{worker}-{len(runs)}", frames, slice_for(loop, key, frames))
        runs.append(await dictate(url, run, pace))
        if run.refusal:
            await asyncio.sleep(REFUSAL_BACKOFF)  # as a client honouring server_busy would
    return runs


@dataclass
class Upload:
    status: int | None
    latency: float
    code: str | None = None


async def upload_loop(base: str, deadline: float, wav: bytes) -> list[Upload]:
    results = []
    async with httpx.AsyncClient(base_url=base, timeout=STOP_TIMEOUT) as client:
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("load.wav", wav, "audio/wav")},
                    data={"language": "en"},
                )
                code = None
                if response.status_code >= 400:
                    code = (response.json().get("error") or {}).get("code")
                results.append(Upload(response.status_code, time.perf_counter() - began, code))
                if code in REFUSALS:
                    await asyncio.sleep(REFUSAL_BACKOFF)
            except httpx.HTTPError as exc:
                results.append(Upload(None, time.perf_counter() - began, type(exc).__name__))
    return results


class RssSampler:
    """Peak resident memory of the server process and its children."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, int]] = []

    def rss(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may exit meanwhile
                total += proc.memory_info().rss
        return total

    async def run(self, until: asyncio.Event) -> None:
        began = time.monotonic()
        while not until.is_set():
            try:
                self.samples.append((time.monotonic() - began, self.rss()))
            except psutil.Error:
                return
            await asyncio.sleep(self.every)

    @property
    def peak_mb(self) -> float:
        return max((rss for _, rss in self.samples), default=0) / 2**20


# -- the archive, read from disk -----------------------------------------------


@dataclass
class Archived:
    folder: Path
    closed: bool
    recovered: bool
    audio: bytes | None  # FLAC (final) or raw PCM, as PCM16LE
    source: str  # "flac", "pcm", "none"


def archives_by_session(logs: Path) -> dict[str, list[Archived]]:
    """Client sessionId → the archive folders of its connections."""
    found: dict[str, list[Archived]] = {}
    for events_path in logs.glob("sessions/*/*/events.jsonl"):
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
        sid = next((e.get("session_id") for e in events if e.get("type") == "protocol_started"), None)
        if sid is None:
            continue
        close = next((e for e in events if e.get("type") == "close"), None)
        folder = events_path.parent
        audio, source = read_archived_audio(folder)
        found.setdefault(sid, []).append(
            Archived(folder, close is not None, bool(close and close.get("recovered")), audio, source)
        )
    return found


def read_archived_audio(folder: Path) -> tuple[bytes | None, str]:
    flac, pcm = folder / "input.flac", folder / "input.pcm"
    if flac.exists():
        try:
            return sf.read(flac, dtype="int16")[0].astype("<i2").tobytes(), "flac"
        except (RuntimeError, sf.LibsndfileError):
            return None, "flac (unreadable)"
    if pcm.exists():
        return pcm.read_bytes(), "pcm"
    return None, "none"


async def wait_closed(logs: Path, sids: set[str], timeout: float) -> None:
    """Archives are converted after the socket ends: wait for their ``close`` lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = archives_by_session(logs)
        if all(any(a.closed for a in found.get(sid, [])) for sid in sids):
            return
        await asyncio.sleep(0.5)


def check_archive(run: Dictation, archives: list[Archived]) -> str:
    """``ok``, or what is wrong with this connection's archived audio."""
    expected = run.pcm[: (run.ack_seq + 1) * FRAME_BYTES]
    if not archives:
        return "ok" if not expected else "missing folder"
    if len(archives) > 1:
        return f"{len(archives)} folders for one connection"
    audio = archives[0].audio or b""
    if audio == expected:
        return "ok"
    if len(audio) > len(expected) and audio.startswith(expected):
        return f"{len(audio) - len(expected)} bytes beyond the acknowledged frames"
    frames = len(audio) // FRAME_BYTES
    return f"audio differs: {len(audio)} bytes archived, {len(expected)} acknowledged ({frames} frames)"


# -- the phases ----------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": pct(values, q) for q in (0.5, 0.95, 0.99)} | {
        "max": max(values, default=None)
    }


async def load_phase(server: LiveServer, args: argparse.Namespace) -> dict[str, Any]:
    url = server.url.replace("http", "ws") + "/ws/transcribe"
    loop = speech_loop()
    wav = wav_bytes(speech("voice_a")[: int(args.upload_sec * 16000)])
    sampler = RssSampler(server.proc.pid)
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop_sampling))
    rss_before = sampler.rss() / 2**20
    deadline = time.monotonic() + args.seconds
    began = time.monotonic()
    frames = round(args.utterance_sec * 10)
    pace = 0.1 / args.speed
    dictations = [dictation_loop(url, w, deadline, frames, pace, loop) for w in range(args.sessions)]
    uploads = [upload_loop(server.url, deadline, wav) for _ in range(args.uploads)]
    hostile = asyncio.create_task(run_hostile(server.url, args.seconds)) if args.hostile else None
    results = await asyncio.gather(*dictations, *uploads)
    hostile_outcomes = await hostile if hostile is not None else None
    wall = time.monotonic() - began
    runs: list[Dictation] = [run for batch in results[: args.sessions] for run in batch]
    posts: list[Upload] = [u for batch in results[args.sessions :] for u in batch]
    await wait_closed(server.logs, {r.sid for r in runs if r.ack_seq >= 0}, timeout=120)
    stop_sampling.set()
    await sampling
    archives = archives_by_session(server.logs)
    verdicts = Counter(check_archive(r, archives.get(r.sid, [])) for r in runs)
    summary = summarize_load(runs, posts, verdicts, sampler, rss_before, wall)
    sidecars = [json.loads(p.read_text()) for p in server.logs.glob("http/*/*/upload.json")]
    summary["upload_sidecars"] = sum(not s["filename"].startswith("pad-") for s in sidecars)  # one per 200
    if hostile_outcomes is not None:
        summary["hostile"] = hostile_outcomes
        summary["hostile_after"] = await hostile_aftermath(server)
    summary["server_events"] = event_counts(
        server.logs, ("partial_begin", "partial_done", "stable_prefix_committed")
    )
    return summary


async def hostile_aftermath(server: LiveServer) -> dict[str, Any]:
    """What the hostile clients left: live-rot reloads, the archive's state, and what the
    padded uploads cost the archive against what they sent."""
    async with httpx.AsyncClient(timeout=60) as http:
        health = (await http.get(f"{server.url}/health")).json()
    padded = [p.parent for p in server.logs.glob("http/*/*/upload.json") if '"pad-' in p.read_text()]
    archived = sum(f.stat().st_size for folder in padded for f in folder.iterdir())
    return {
        "live_rot": health["streaming_probe"]["live"],
        "archive": health.get("archive"),
        "padded_uploads_archived": len(padded),
        "padded_archive_bytes_each": archived // max(1, len(padded)),
    }


def event_counts(logs: Path, kinds: tuple[str, ...]) -> dict[str, int]:
    """How often the server logged each of ``kinds`` (e.g. partial decodes begun vs finished)."""
    counts: Counter[str] = Counter()
    for events_path in logs.glob("sessions/*/*/events.jsonl"):
        for line in events_path.read_text().splitlines():
            kind = json.loads(line).get("type") if line.strip() else None
            if kind in kinds:
                counts[kind] += 1
    return dict(counts)


def summarize_load(
    runs: list[Dictation],
    posts: list[Upload],
    verdicts: Counter[str],
    sampler: RssSampler,
    rss_before: float,
    wall: float,
) -> dict[str, Any]:
    refused = Counter(r.refusal for r in runs if r.refusal)
    unanswered = [r for r in runs if not r.refusal and not r.answered]
    uncovered = [
        r for r in runs if r.answered and (r.final or {}).get("recognizedThroughSeq") not in (None, r.frames)
    ]
    return {
        "wall_sec": round(wall, 1),
        "dictations": len(runs),
        "answered_final_done": sum(r.answered for r in runs),
        "refused": dict(refused),
        "unanswered": len(unanswered),
        "unanswered_examples": [f"{r.sid}: {r.error} (close {r.close_code})" for r in unanswered[:5]],
        "wrong_coverage": len(uncovered),
        "covered_finals": sum(1 for r in runs if (r.final or {}).get("recognizedThroughSeq") == r.frames),
        "frames_sent": sum(r.frames for r in runs),
        "frames_acked": sum(r.ack_seq + 1 for r in runs),
        "partials": sum(r.partials for r in runs),
        "archive": dict(verdicts),
        "stop_latency_sec": percentiles([r.stop_latency for r in runs if r.stop_latency is not None]),
        "ack_rtt_sec": percentiles([t for r in runs for t in r.ack_rtts]),
        "uploads": len(posts),
        "upload_status": dict(Counter(str(u.status) for u in posts)),
        "upload_refusals": dict(Counter(u.code for u in posts if u.code in REFUSALS)),
        "upload_latency_sec": percentiles([u.latency for u in posts if u.status == 200]),
        "rss_mb": {"before": round(rss_before, 1), "peak": round(sampler.peak_mb, 1)},
    }


async def crash_phase(
    server: LiveServer, args: argparse.Namespace, env: dict[str, str], work: Path
) -> tuple[dict[str, Any], LiveServer]:
    """SIGKILL with sessions mid-stream, restart on the same log folder, read the archive."""
    url = server.url.replace("http", "ws") + "/ws/transcribe"
    loop = speech_loop()
    frames = round(args.utterance_sec * 10)
    runs = [
        Dictation(f"crash-{i}", frames, slice_for(loop, 10**6 + i, frames))
        for i in range(args.crash_sessions)
    ]
    # Every frame is sent and acknowledged, no stop: the sessions are live when the kill lands.
    hold = asyncio.Event()
    live = asyncio.gather(*(dictate(url, run, 0.1 / args.speed, hold) for run in runs))
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and not all(r.ack_seq >= frames - 1 or r.error for r in runs):
        await asyncio.sleep(0.1)
    server.proc.kill()
    server.proc.wait()
    hold.set()
    await live
    server.stop()
    before = {r.sid: [a.source for a in archives_by_session(server.logs).get(r.sid, [])] for r in runs}
    restarted = LiveServer(args.backend, env, work / "server-restarted.log")
    restarted.logs = server.logs
    restarted.wait_ready()
    await wait_closed(server.logs, {r.sid for r in runs if r.ack_seq >= 0}, timeout=args.recovery_wait)
    archives = archives_by_session(server.logs)
    sessions = []
    for run in runs:
        found = archives.get(run.sid, [])
        sessions.append(
            {
                "sid": run.sid,
                "acked_frames": run.ack_seq + 1,
                "before_restart": before[run.sid],
                "after_restart": [a.source for a in found],
                "closed": any(a.closed for a in found),
                "recovered_flag": any(a.recovered for a in found),
                "audio": check_archive(run, found),
            }
        )
    recovered = all(
        s["closed"] and s["recovered_flag"] and s["after_restart"] == ["flac"] and s["audio"] == "ok"
        for s in sessions
    )
    raw_complete = all(s["audio"] == "ok" for s in sessions)
    return {
        "recovery": "OK" if recovered else "NOT IMPLEMENTED/failed",
        "raw_complete": raw_complete,
        "sessions": sessions,
    }, restarted


# -- output --------------------------------------------------------------------


def fmt(value: float | None, unit: str = "s") -> str:
    return "n/a" if value is None else f"{value:.3f} {unit}"


def print_table(load: dict[str, Any], crash: dict[str, Any], args: argparse.Namespace) -> None:
    rows = [
        (
            "load",
            f"{args.sessions} dictations + {args.uploads} uploads for {args.seconds:g} s "
            f"({load['wall_sec']} s wall, backend {args.backend})",
        ),
        (
            "dictations",
            f"{load['dictations']} ({load['answered_final_done']} final+done, "
            f"{load['covered_finals']} covered, refused {load['refused'] or 0}, "
            f"unanswered {load['unanswered']}, wrong coverage {load['wrong_coverage']})",
        ),
        (
            "frames",
            f"{load['frames_acked']} acked of {load['frames_sent']} sent; "
            f"{load['partials']} partials received; server events {load['server_events']}",
        ),
        ("archive", ", ".join(f"{n} {verdict}" for verdict, n in load["archive"].items())),
        ("stop -> final", "  ".join(f"{k} {fmt(v)}" for k, v in load["stop_latency_sec"].items())),
        ("frame -> ack", "  ".join(f"{k} {fmt(v)}" for k, v in load["ack_rtt_sec"].items())),
        (
            "uploads",
            f"{load['uploads']} (status {load['upload_status']}, refused {load['upload_refusals'] or 0}, "
            f"{load['upload_sidecars']} archived)",
        ),
        ("upload latency", "  ".join(f"{k} {fmt(v)}" for k, v in load["upload_latency_sec"].items())),
        ("server RSS", f"{load['rss_mb']['before']} MB before, {load['rss_mb']['peak']} MB peak"),
        (
            "kill -9",
            f"recovery: {crash['recovery']} (raw audio of every acked frame on disk: "
            f"{'yes' if crash['raw_complete'] else 'NO'})",
        ),
    ]
    for session in crash["sessions"]:
        rows.append(
            (
                f"  {session['sid']}",
                f"{session['acked_frames']} acked; before restart "
                f"{session['before_restart']}, after {session['after_restart']}, closed {session['closed']}, "
                f"recovered {session['recovered_flag']}, audio {session['audio']}",
            )
        )
    for example in load["unanswered_examples"]:
        rows.append(("  unanswered", example))
    if "hostile" in load:
        for name, outcomes in load["hostile"].items():
            rows.append((f"  hostile {name}", ", ".join(f"{n} {o}" for o, n in outcomes.items())))
        after = load["hostile_after"]
        rows.append(("  live rot", json.dumps(after["live_rot"])))
        rows.append(
            (
                "  padded uploads",
                f"{after['padded_uploads_archived']} archived, "
                f"{after['padded_archive_bytes_each']} bytes each (21 MB sent each)",
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def failures(load: dict[str, Any], crash: dict[str, Any]) -> list[str]:
    found = []
    if load["unanswered"]:
        found.append(f"{load['unanswered']} stops without final + done")
    if load["wrong_coverage"]:
        found.append(f"{load['wrong_coverage']} finals with a wrong recognizedThroughSeq")
    if set(load["archive"]) - {"ok"}:
        found.append(f"archive: {load['archive']}")
    if any(u != "200" and u != "503" for u in load["upload_status"]):
        found.append(f"uploads: {load['upload_status']}")
    if load["upload_sidecars"] != load["upload_status"].get("200", 0):
        found.append(
            f"{load['upload_sidecars']} upload archives for {load['upload_status'].get('200', 0)} uploads"
        )
    if crash["recovery"] != "OK":
        found.append(f"recovery: {crash['recovery']}")
    if "hostile" in load:
        found += hostile_failures(load["hostile"])
        if load["hostile_after"]["live_rot"]["reloads"]:
            found.append("a live-rot reload of a healthy model")
    return found


async def main_async(args: argparse.Namespace) -> int:
    work, env = bench_workspace(
        args,
        "polyasr-load-test-",
        POLYASR_TOKENS_PER_AUDIO_SEC=str(args.tokens_per_sec),
    )
    if args.partials:
        env["POLYASR_PARTIALS_ENABLED"] = "1"
    if args.hostile:  # short enough that trickles and half-sent heads end within the run
        env.update(POLYASR_BODY_TIMEOUT_SEC="10", POLYASR_HEADER_TIMEOUT_SEC="5")
    server = LiveServer(args.backend, env, work / "server.log")
    server.logs = work / "logs"
    try:
        server.wait_ready()
        load = await load_phase(server, args)
        crash, server = await crash_phase(server, args, env, work)
    finally:
        server.stop()
    print_table(load, crash, args)
    found = failures(load, crash)
    out = REPO / "bench" / "out" / f"load_test-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "load": load, "crash": crash, "failures": found, "work_dir": str(work)}
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'FAILED: ' + '; '.join(found) if found else 'all checks passed'}\nwrote {out}")
    return 1 if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--sessions", type=int, default=50, help="concurrent dictations")
    parser.add_argument("--uploads", type=int, default=20, help="concurrent batch upload loops")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long new work is started")
    parser.add_argument("--utterance-sec", type=float, default=4.0, help="audio per dictation")
    parser.add_argument("--upload-sec", type=float, default=4.0, help="audio per batch upload")
    parser.add_argument("--speed", type=float, default=2.0, help="frame rate as a multiple of real time")
    parser.add_argument("--crash-sessions", type=int, default=3, help="sessions live when SIGKILL lands")
    parser.add_argument("--recovery-wait", type=float, default=30.0, help="seconds to wait for recovery")
    parser.add_argument(
        "--tokens-per-sec",
        type=float,
        default=6.0,
        help="POLYASR_TOKENS_PER_AUDIO_SEC: random weights write out their whole budget; "
        "~6 makes them cost what real speech does",
    )
    parser.add_argument(
        "--partials", action="store_true", help="POLYASR_PARTIALS_ENABLED=1 (more decode load)"
    )
    add_model_flags(parser)
    parser.add_argument("--hostile", action="store_true", help="hostile and careless clients beside the load")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 dictations + 2 uploads for 15 s")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.uploads, args.seconds = 5, 2, 15.0
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
