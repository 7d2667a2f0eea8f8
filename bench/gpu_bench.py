"""One GPU benchmark of the CUDA engine: per-token cost, server throughput,
dictation latency, load time and memory, on full-size random-weight models.

Runs on a bare GPU box (torch installed, qwen-asr and its pins carried as
wheels, no network): it builds a full-size random-weight Qwen3-ASR checkpoint
from the published dimensions, then measures, in one run of a few minutes:

* ms per generated token at batch 1 and 32 on 5 s and 30 s clips, ``fast``
  vs ``generate`` (the difference of two budgets over the difference of their
  token counts, so the prompt's prefill drops out), and how often the two
  agree in bf16 at each batch;
* a graph-correctness check in float32: the fast loop (graph replays on a
  GPU) against ``generate`` token for token, a decode preempted mid-way and
  the next one clean, and GPU memory after the decoder is dropped;
* load time: plain (``generate``), with graph capture (``fast``), and with
  ``POLYASR_COMPILE=1`` cold (empty compile cache) and warm (a second process);
* GPU memory before load, after load, after ``POST /model/unload``: the
  server's own ``/health`` numbers, ``nvidia-smi``'s used memory and the
  delta to before the load (target: within 250 MiB);
* server batch throughput (audio-s per s) at concurrency 1, 8 and 32 with
  30 s clips, through ``/v1/audio/transcriptions``;
* dictation over the WebSocket: stop-to-final p50/p95 and time to first
  partial (p50/p95, from the first frame) for 5, 30 and 120 s utterances
  with 1 and 8 sessions, replayed at ``--speed`` x real time (the JSON and
  the table say which), the server's host CPU per live session, and the
  live-rot reloads the server did meanwhile;
* capacity: concurrent dictations at real-time pace in growing steps
  (``--capacity``), until stop-to-final p95 passes 300 ms or a session gets
  no partial; the largest step that held is the number of real-time
  dictations one GPU sustains, with the host CPU per live session of each step.

Random weights write their whole token budget, so decode cost is an upper
bound; the server keeps its default token budget unless ``--tokens-per-sec``
says otherwise. Writes ``--out`` (JSON) and prints a short table.

    python -m bench.gpu_bench                      # H100/H200: 0.6B
    python -m bench.gpu_bench --sizes 0.6B,1.7B
    .venv-cuda/bin/python -m bench.gpu_bench --cpu-rehearsal --no-compile   # same path, tiny, CPU

``--cpu-rehearsal`` runs every step on the tiny checkpoints on the CPU (float32,
shorter utterances, 2x replay); CPU timings say nothing about a GPU. The
compile loads come last, each in a fresh process under ``--compile-timeout``
(the JSON is written before them, so a slow compile loses nothing else).

On a bare GPU machine the whole sequence is ``bench/gpu_run.sh`` (README:
"GPU: fast decode and the GPU benchmark"); ``sh bench/gpu_run.sh rehearse``
runs it on a CPU machine in an environment holding only the GPU image's
packages and the carried wheels.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.stream_bench import measure, pct
from polyasr.core.config import load_settings
from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, engine_class, tiny_env
from tests.fixtures.tiny_models import (
    FULL_0_6B,
    FULL_1_7B,
    TINY,
    TinyModels,
    build_checkpoint,
    build_tiny_models,
)

SIZES = {"0.6B": FULL_0_6B, "1.7B": FULL_1_7B, "tiny": TINY}
MB = 1_048_576


def clip_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of the project's speech sample, tiled, at a random gain."""
    base = speech("voice_a")
    audio = np.tile(base, int(seconds * 16000 // len(base)) + 1)[: int(seconds * 16000)]
    return (audio * np.random.default_rng(seed).uniform(0.6, 1.0)).astype(np.float32)


def build(size: str, work: Path) -> TinyModels:
    """Tokenizer + tiny aligner from the fixture builder, the ASR model at ``size``."""
    tiny = build_tiny_models(work / "tiny")
    if size == "tiny":
        return tiny
    started = time.perf_counter()
    asr = build_checkpoint(work / size, SIZES[size], tokenizer_files=_tokenizer_files(tiny.asr))
    print(f"built {size} random-weight checkpoint in {time.perf_counter() - started:.1f} s", flush=True)
    return TinyModels(asr=asr, aligner=tiny.aligner)


def _tokenizer_files(checkpoint: Path) -> dict[str, str]:
    names = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
    return {name: (checkpoint / name).read_text(encoding="utf-8") for name in names}


def env_for(models: TinyModels, args: argparse.Namespace, **extra: str) -> dict[str, str]:
    return tiny_env(
        models, **{"POLYASR_DEVICE": args.device, "POLYASR_DTYPE": args.dtype, "POLYASR_LOG_DIR": "", **extra}
    )


def gpu_mb() -> dict[str, float] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "allocated_mb": round(torch.cuda.memory_allocated() / MB, 1),
        "reserved_mb": round(torch.cuda.memory_reserved() / MB, 1),
        "nvidia_smi_used_mb": nvidia_smi_used_mb(),
    }


def nvidia_smi_used_mb() -> float | None:
    """The device's used memory as the driver sees it (every process, every pool)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return float(out.strip().splitlines()[0])


# -- in this process: per-token cost, agreement, memory -------------------------


def per_token(
    engine: Any, model: Any, batch: int, budgets: tuple[int, int], seconds: float = 5.0
) -> tuple[float, list[list[int]]]:
    """ms per generated token at ``batch`` on ``seconds`` clips: two budgets,
    the difference of their times over the difference of their tokens
    (prefill cancels out)."""
    clips = [clip_audio(seconds, seed=i) for i in range(batch)]
    prompts = [model._build_text_prompt(context="", force_language="English")] * batch
    inputs = model.processor(text=prompts, audio=clips, return_tensors="pt", padding=True)
    inputs = inputs.to(model.model.device).to(model.model.dtype)
    timings = []
    ids: list[list[int]] = []
    for budget in (budgets[0], *budgets):  # the first run warms this shape up
        began = time.perf_counter()
        ids = engine.generated_ids(model, inputs, [budget] * batch)
        synchronize()
        timings.append((time.perf_counter() - began, max(len(row) for row in ids)))
    (t1, n1), (t2, n2) = timings[1], timings[2]
    return 1000 * (t2 - t1) / max(1, n2 - n1), ids


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    """Share of clips with identical ids, and of tokens before the first difference."""
    same = sum(x == y for x, y in zip(a, b, strict=True))
    agreed = total = 0
    for x, y in zip(a, b, strict=True):
        total += max(len(x), len(y))
        agreed += next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    return {"clips_identical": round(same / len(a), 3), "tokens_before_divergence": round(agreed / total, 3)}


def in_process(models: TinyModels, args: argparse.Namespace) -> dict[str, Any]:
    importlib.import_module("qwen_asr")  # its import (transformers) is not load time
    out: dict[str, Any] = {"memory": {"before_load": gpu_mb()}}
    ids: dict[str, dict[int, list[list[int]]]] = {}
    for decode in ("generate", "fast"):
        settings = load_settings("cuda", env_for(models, args, POLYASR_DECODE=decode))
        engine = engine_class("cuda")(settings)
        began = time.perf_counter()
        model = engine.load("asr")
        out[f"load_s_{decode}"] = round(time.perf_counter() - began, 2)
        out["memory"][f"after_load_{decode}"] = gpu_mb()
        ids[decode] = {}
        for batch in (1, 32):
            for seconds in args.token_clip_sec:
                ms, ids[decode][batch] = per_token(engine, model, batch, args.token_budgets, seconds)
                suffix = "" if seconds == args.token_clip_sec[0] else f"_{seconds:g}s"
                out[f"ms_per_token_{decode}_b{batch}{suffix}"] = round(ms, 3)
                print(f"{decode:8s} batch {batch:2d}, {seconds:g} s clips: {ms:7.2f} ms/token", flush=True)
        del model
        gc.collect()
        engine.empty_cache()
        out["memory"][f"after_unload_{decode}"] = gpu_mb()
    for batch in (1, 32):
        out[f"agreement_b{batch}"] = agreement(ids["fast"][batch], ids["generate"][batch])
    out["graph_check_float32"] = graph_check(models, args)
    return out


def graph_check(models: TinyModels, args: argparse.Namespace) -> dict[str, Any]:
    """In float32 the fast loop (graph replays on a GPU, the eager loop on the
    CPU) must give ``generate``'s tokens; a decode preempted mid-way must
    leave the next one clean; dropping the model must free the decoder."""
    from polyasr.core.engine import Clip, Preempted

    out: dict[str, Any] = {}
    loaded = {}
    for decode in ("fast", "generate"):
        env = env_for(models, args, POLYASR_DECODE=decode, POLYASR_DTYPE="float32")
        engine = engine_class("cuda")(load_settings("cuda", env))
        loaded[decode] = (engine, engine.load("asr"))
    clips = [Clip(clip_audio(s, seed=i), "English", "", 24) for i, s in enumerate((5.0, 12.0, 2.0))]
    (fast, fast_model), (slow, slow_model) = loaded["fast"], loaded["generate"]
    out["tokens_identical"] = [t.raw for t in fast.transcribe(fast_model, clips)] == [
        t.raw for t in slow.transcribe(slow_model, clips)
    ]
    polls = iter(range(1000))
    try:
        fast.transcribe(fast_model, clips[:1], lambda: next(polls) == 4)
        out["preempted"] = False
    except Preempted:
        out["preempted"] = True
    again = fast.transcribe(fast_model, clips[:1])[0].raw == slow.transcribe(slow_model, clips[:1])[0].raw
    out["clean_after_preemption"] = again
    before = gpu_mb()
    del fast_model, loaded
    gc.collect()
    fast.empty_cache()
    out["memory_before_drop"], out["memory_after_drop"] = before, gpu_mb()
    print(f"graph check (float32): {out}", flush=True)
    return out


# -- a load in a fresh process (compile cold/warm) ------------------------------


def load_in_subprocess(models: TinyModels, args: argparse.Namespace, cache: Path, timeout: float) -> Any:
    """Seconds to load with POLYASR_COMPILE=1 in a fresh process, and its ms/token."""
    env = {**os.environ, **env_for(models, args, POLYASR_DECODE="fast", POLYASR_COMPILE="1")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    cmd = [
        sys.executable,
        "-m",
        "bench.gpu_bench",
        "--load-probe",
        "--token-budgets",
        ",".join(map(str, args.token_budgets)),
    ]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"
    except subprocess.CalledProcessError as exc:
        return f"failed: {exc.stderr[-500:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_probe(args: argparse.Namespace) -> None:
    """Child of :func:`load_in_subprocess`: load once, time one batch-1 token."""
    settings = load_settings("cuda", {**os.environ})
    engine = engine_class("cuda")(settings)
    began = time.perf_counter()
    model = engine.load("asr")
    load_s = time.perf_counter() - began
    ms, _ids = per_token(engine, model, 1, args.token_budgets)
    print(json.dumps({"load_s": round(load_s, 2), "ms_per_token_b1": round(ms, 3)}))


# -- the real server: memory, throughput, dictation -----------------------------


def server_health(url: str) -> dict[str, Any]:
    body = httpx.get(f"{url}/health", timeout=30).json()
    out = {key: body.get(key) for key in ("decode", "graphs", "compile", "gpu", "fast_decode")}
    out["nvidia_smi_used_mb"] = nvidia_smi_used_mb()
    out["live_rot_reloads"] = body["streaming_probe"]["live"]["reloads"]
    return out


async def throughput(url: str, concurrency: int, upload: bytes, seconds: float, requests: int) -> float:
    """Audio-seconds transcribed per wall second with ``concurrency`` clients."""
    queue = list(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            form = {"language": "English", "response_format": "json"}
            response = await http.post(
                "/v1/audio/transcriptions", files={"file": ("c.wav", upload)}, data=form
            )
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=900) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return requests * seconds / (time.perf_counter() - began)


def summarize(runs: list[Any]) -> dict[str, Any]:
    finals = [r.final_latency for r in runs if r.final_latency is not None]
    firsts = [r.first_partial for r in runs if r.first_partial is not None]
    return {
        "final_p50_s": round(pct(finals, 0.5), 3) if finals else None,
        "final_p95_s": round(pct(finals, 0.95), 3) if finals else None,
        "first_partial_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_partial_p95_s": round(pct(firsts, 0.95), 3) if firsts else None,
        "sessions_without_partial": len(runs) - len(firsts),
        "errors": sum(len(r.errors) for r in runs),
    }


CAPACITY_P95_S = 0.3  # stop-to-final p95 a sustained real-time load must keep


async def capacity(ws: str, process: psutil.Process, args: argparse.Namespace) -> dict[str, Any]:
    """How many concurrent real-time dictations one device sustains: sessions
    at real-time pace, in growing steps, until stop-to-final p95 passes
    ``CAPACITY_P95_S`` or a session gets no partial. Each step's figures and
    host CPU per live session are kept; ``sustained`` is the largest step that held."""
    steps: dict[str, Any] = {}
    sustained = 0
    for sessions in args.capacity:
        cpu, began = process.cpu_times(), time.perf_counter()
        runs = await measure(ws, sessions, args.capacity_sec, f"cap{sessions}", 1.0)
        used = sum(process.cpu_times()[:2]) - sum(cpu[:2])
        summary = summarize(runs)
        summary["host_cpu_per_session"] = round(used / (time.perf_counter() - began) / sessions, 3)
        steps[str(sessions)] = summary
        print(f"capacity {sessions} real-time sessions: {summary}", flush=True)
        held = (
            summary["final_p95_s"] is not None
            and summary["final_p95_s"] <= CAPACITY_P95_S
            and summary["sessions_without_partial"] == 0
            and summary["errors"] == 0
        )
        if not held:
            break
        sustained = sessions
    return {"sustained_sessions": sustained, "p95_target_s": CAPACITY_P95_S, "steps": steps}


async def server_part(models: TinyModels, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    budget = {} if args.tokens_per_sec is None else {"POLYASR_TOKENS_PER_AUDIO_SEC": str(args.tokens_per_sec)}
    env = env_for(
        models,
        args,
        POLYASR_PARTIALS_ENABLED="1",
        POLYASR_STREAMING_PROBE="0",
        POLYASR_DECODE=args.server_decode,
        **budget,
    )
    server = LiveServer("cuda", env, work / "server.log")
    process = psutil.Process(server.proc.pid)
    server.wait_ready(timeout=600)
    out: dict[str, Any] = {"health_before_load": server_health(server.url)}
    try:
        upload = wav_bytes(clip_audio(args.clip_sec))
        out["throughput_audio_s_per_s"] = {}
        for concurrency in args.concurrency:
            requests = max(concurrency, args.min_requests)
            if concurrency == args.concurrency[0]:  # loads the model and warms the path
                await throughput(server.url, 1, upload, args.clip_sec, 1)
                out["health_after_load"] = server_health(server.url)
            rate = await throughput(server.url, concurrency, upload, args.clip_sec, requests)
            out["throughput_audio_s_per_s"][str(concurrency)] = round(rate, 2)
            print(f"throughput at concurrency {concurrency:2d}: {rate:8.2f} audio-s/s", flush=True)
        ws = server.url.replace("http", "ws") + "/ws/transcribe"
        out["dictation"] = {}
        await measure(ws, 1, 3.0, "warm-up", args.speed)
        for sessions in args.sessions:
            for seconds in args.lengths:
                cpu, began = process.cpu_times(), time.perf_counter()
                runs = await measure(ws, sessions, seconds, f"n{sessions}", args.speed)
                used = sum(process.cpu_times()[:2]) - sum(cpu[:2])
                summary = summarize(runs)
                summary["host_cpu_per_session"] = round(used / (time.perf_counter() - began) / sessions, 3)
                out["dictation"][f"{sessions}x{seconds:g}s"] = summary
                print(f"dictation {sessions} x {seconds:g} s: {summary}", flush=True)
        out["capacity"] = await capacity(ws, process, args)
        httpx.post(f"{server.url}/model/unload", timeout=120).raise_for_status()
        time.sleep(1.0)
        out["health_after_unload"] = server_health(server.url)
    finally:
        server.stop()
    return out


# -- the run ---------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """The figures that answer the issue's targets, one per line."""
    lines = [f"model {result['size']} on {result['device']} ({result['dtype']}), replay {result['speed']}x"]
    proc = result["in_process"]
    for batch in (1, 32):
        fast, slow = proc[f"ms_per_token_fast_b{batch}"], proc[f"ms_per_token_generate_b{batch}"]
        lines.append(
            f"ms/token batch {batch:2d}: fast {fast:8.2f} | generate {slow:8.2f} | x{slow / fast:5.1f}"
        )
    lines.append(f"fast vs generate agreement: b1 {proc['agreement_b1']} | b32 {proc['agreement_b32']}")
    lines.append(f"graph check (float32): {proc['graph_check_float32']}")
    loads = {
        "plain": proc["load_s_generate"],
        "capture": proc["load_s_fast"],
        **result.get("compile_load", {}),
    }
    lines.append(f"load s: {loads}")
    server = result["server"]
    lines.append(f"throughput audio-s/s by concurrency: {server['throughput_audio_s_per_s']}")
    for key, value in server["dictation"].items():
        lines.append(
            f"dictation {key:>9}: final p50 {value['final_p50_s']} s p95 {value['final_p95_s']} s | "
            f"first partial p50 {value['first_partial_median_s']} p95 {value['first_partial_p95_s']} s "
            f"(none: {value['sessions_without_partial']}) | host CPU/session {value['host_cpu_per_session']}"
        )
    cap = server["capacity"]
    lines.append(
        f"real-time dictations sustained (p95 <= {cap['p95_target_s']} s, every session partials): "
        f"{cap['sustained_sessions']} | by step: "
        + ", ".join(
            f"{n}: p95 {v['final_p95_s']} s, no partial {v['sessions_without_partial']}, "
            f"CPU/session {v['host_cpu_per_session']}"
            for n, v in cap["steps"].items()
        )
    )
    for when in ("health_before_load", "health_after_load", "health_after_unload"):
        lines.append(f"server {when}: {server.get(when)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="polyasr-gpu-bench-"))
    began = time.perf_counter()
    results = []
    for size in args.sizes:
        models = build(size, work)
        result: dict[str, Any] = {
            "size": size,
            "device": args.device,
            "dtype": args.dtype,
            "speed": args.speed,
        }
        result["in_process"] = in_process(models, args)
        result["server"] = asyncio.run(server_part(models, args, work))
        results.append(result)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        if args.compile:  # last: the slowest and least certain part
            cache = work / f"inductor-{size}"
            cold = load_in_subprocess(models, args, cache, args.compile_timeout)
            result["compile_load"] = {"compile_cold": cold}
            if isinstance(cold, dict):  # a warm load means something only after a cold one
                result["compile_load"]["compile_warm"] = load_in_subprocess(
                    models, args, cache, args.compile_timeout
                )
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(table(result), flush=True)
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-rehearsal", action="store_true", help="tiny model on the CPU, shorter runs")
    parser.add_argument("--sizes", default="0.6B", help="comma list of 0.6B, 1.7B, tiny")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--speed", type=float, default=4.0, help="dictation replay, x real time")
    parser.add_argument("--tokens-per-sec", type=float, default=None, help="default: the server's")
    parser.add_argument("--token-clip-sec", default="5,30", help="clip lengths for ms/token")
    parser.add_argument("--clip-sec", type=float, default=30.0)
    parser.add_argument("--lengths", default="5,30,120")
    parser.add_argument("--sessions", default="1,8")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--capacity", default="16,32,64,96", help="real-time sessions per capacity step")
    parser.add_argument("--capacity-sec", type=float, default=15.0, help="seconds each capacity session")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--token-budgets", default="16,144", help="two budgets for ms/token")
    parser.add_argument("--server-decode", default="fast", help="POLYASR_DECODE of the server")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-timeout", type=float, default=420.0)
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    parser.add_argument("--load-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_rehearsal:
        args.sizes, args.device, args.dtype = "tiny", "cpu", "float32"
        args.lengths, args.speed, args.clip_sec = "5,10", 2.0, 10.0
        args.concurrency, args.min_requests, args.token_budgets = "1,8", 2, "8,40"
        args.token_clip_sec = "5"
        args.capacity, args.capacity_sec = "1,2", 5.0
    args.sizes = args.sizes.split(",")
    args.lengths = [float(x) for x in args.lengths.split(",")]
    args.sessions = [int(x) for x in args.sessions.split(",")]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.capacity = [int(x) for x in args.capacity.split(",")]
    args.token_budgets = tuple(int(x) for x in args.token_budgets.split(","))
    args.token_clip_sec = [float(x) for x in args.token_clip_sec.split(",")]
    return args


def main() -> None:
    args = parse_args()
    if args.load_probe:
        load_probe(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
