"""Faults around the model units,
on the real engine with tiny checkpoints: an unload never pulls a model from
under queued work, a decode past its deadline fails its request and breaks
its unit until the stuck call returns (nothing else runs on that model
meanwhile; then the unit reloads), an engine
raising anything never kills a unit's thread, a full queue refuses batch work
at once, and a start-up that can neither find the weights nor reach the hub
fails fast with one line saying what to do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from polyasr.core.engine import Clip, Preempted, Transcript
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import DecodeTimeout, Priority, ServerBusy
from polyasr.models.unit import ModelUnavailable
from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, tiny_env

CLIP = Clip(speech()[:32000], "English", "", 32)


class FaultyEngine:
    """The real engine, with a fault injected into ``transcribe`` on demand:
    ``raise_next`` is raised by the next call (after a real decode), and with
    ``hang_next`` the next call hangs after its real decode until ``release``."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.raise_next: BaseException | None = None
        self.hang_next = False
        self.hanging = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def transcribe(self, model: Any, clips: list[Clip], should_stop: Any = None) -> list[Transcript]:
        result = self._engine.transcribe(model, clips, should_stop)
        fault, self.raise_next = self.raise_next, None
        if fault is not None:
            raise fault
        hang, self.hang_next = self.hang_next, False
        if hang:
            self.hanging.set()
            self.release.wait(120)
            self.hanging.clear()
        return result


@pytest.fixture
def engine(make_settings: Any, make_engine: Any) -> FaultyEngine:
    return FaultyEngine(make_engine(make_settings()))


def manager_for(engine: Any, **kwargs: Any) -> AsrModelManager:
    options: dict[str, Any] = {"coload": True, "idle_seconds": 60.0, "load_timeout": 120.0}
    options.update(kwargs)
    return AsrModelManager(engine, **options)


def decode(mgr: AsrModelManager, engine: Any, priority: Priority = Priority.BATCH) -> asyncio.Future[Any]:
    return asyncio.ensure_future(mgr.unit("asr").run_batched("tx", engine.transcribe, CLIP, priority))


async def block_unit(mgr: AsrModelManager) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Occupy the asr unit's thread until the returned event is set."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(mgr.run("asr", lambda _model: gate.wait(30), Priority.FINAL))
    while mgr.status()["unit_state"]["asr"]["leases"] == 0 or mgr.queue_depth("asr"):
        await asyncio.sleep(0.01)
    return gate, blocker


async def test_unload_lets_queued_decodes_finish_and_later_ones_reload(engine: Any) -> None:
    mgr = manager_for(engine)
    async with mgr.lease("asr"):
        pass
    gate, blocker = await block_unit(mgr)
    queued = [decode(mgr, engine) for _ in range(4)]
    await asyncio.sleep(0.1)
    assert mgr.queue_depth("asr") == 4
    unload = asyncio.ensure_future(mgr.unload_all())
    await asyncio.sleep(0.2)
    assert not unload.done()  # it waits for the work bound to the model
    assert not mgr.is_resident("asr")  # but new work no longer gets that model
    gate.set()
    await blocker
    results = await asyncio.gather(*queued)
    assert [r.language for r in results] == ["English"] * 4
    assert await unload == ["asr"]
    assert not mgr.is_resident("asr")
    assert (await decode(mgr, engine)).language == "English"  # the next decode reloads
    state = mgr.status()["unit_state"]["asr"]
    assert state["loads"] == 2 and state["evictions"] == 1 and mgr.is_resident("asr")
    await mgr.close()


async def test_work_arriving_during_an_unload_waits_for_it_then_reloads(engine: Any) -> None:
    queued: list[asyncio.Future[Any]] = []
    loads: list[int] = []  # for each load: how many queued decodes had finished
    real_load = engine.load
    engine.load = lambda unit: loads.append(sum(t.done() for t in queued)) or real_load(unit)
    mgr = manager_for(engine)
    async with mgr.lease("asr"):
        pass
    gate, blocker = await block_unit(mgr)
    queued.extend(decode(mgr, engine) for _ in range(3))
    await asyncio.sleep(0.1)
    unload = asyncio.ensure_future(mgr.unload_all())
    await asyncio.sleep(0.1)
    late = decode(mgr, engine)
    gate.set()
    await blocker
    assert [r.language for r in await asyncio.gather(*queued, late)] == ["English"] * 4
    assert await unload == ["asr"]
    # the reload started only once the old model's work was done (never two copies)
    assert loads == [0, 3]
    await mgr.close()


async def test_a_decode_past_its_deadline_breaks_the_unit_until_it_returns_then_reloads(
    engine: Any,
) -> None:
    mgr = manager_for(engine, decode_timeout=1.0)
    async with mgr.lease("asr"):
        pass
    engine.hang_next = True  # the next call finishes its decode, then hangs
    stuck = decode(mgr, engine, Priority.BATCH)
    while not engine.hanging.is_set():
        await asyncio.sleep(0.01)
    behind = decode(mgr, engine, Priority.FINAL)
    with pytest.raises(DecodeTimeout, match="did not finish within 1 s"):
        await stuck
    with pytest.raises(ModelUnavailable, match="stuck past its 1 s deadline"):
        await asyncio.wait_for(behind, 5)  # queued work fails at once instead of sharing the model
    with pytest.raises(ModelUnavailable, match="stuck"):
        await decode(mgr, engine, Priority.FINAL)  # and new work is refused meanwhile
    assert engine.hanging.is_set() and mgr.status()["unit_state"]["asr"]["stuck_for"] is not None
    engine.release.set()
    deadline = time.monotonic() + 60
    while mgr.status()["unit_state"]["asr"]["loads"] < 2:  # the stuck call returned: a fresh model
        assert time.monotonic() < deadline, "the unit did not reload after the stuck call returned"
        await asyncio.sleep(0.05)
    state = mgr.status()["unit_state"]["asr"]
    assert state["evictions"] == 1 and state["stuck_for"] is None and mgr.is_resident("asr")
    assert (await decode(mgr, engine)).language == "English"
    await mgr.close()


@pytest.mark.parametrize("fault", [SystemExit(3), KeyboardInterrupt(), StopIteration(), MemoryError("oom")])
async def test_an_engine_raising_anything_fails_its_waiters_and_the_unit_lives(
    engine: Any, fault: BaseException
) -> None:
    mgr = manager_for(engine)
    engine.raise_next = fault
    batch = [decode(mgr, engine) for _ in range(3)]
    done, _ = await asyncio.wait(batch, timeout=60)
    assert len(done) == 3  # no waiter hangs
    errors = [task.exception() for task in batch]
    assert all(isinstance(e, Exception) for e in errors)
    assert type(fault).__name__ in str(errors[0]) or errors[0] is fault
    assert (await decode(mgr, engine)).language == "English"
    await mgr.close()


async def test_a_full_queue_refuses_batch_work_sheds_partials_and_keeps_finals(engine: Any) -> None:
    mgr = manager_for(engine, max_queued=2)
    async with mgr.lease("asr"):
        pass
    gate, blocker = await block_unit(mgr)
    admitted = [decode(mgr, engine) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(ServerBusy, match="2 decodes already queued on asr"):
        await decode(mgr, engine, Priority.BATCH)
    with pytest.raises(Preempted):
        await decode(mgr, engine, Priority.PARTIAL)
    finals = [decode(mgr, engine, Priority.FINAL), decode(mgr, engine, Priority.COMMIT)]
    # a native-stream feed is partial work too, but its state must see every chunk
    native = asyncio.ensure_future(mgr.run("asr", lambda _model: "fed", Priority.PARTIAL))
    await asyncio.sleep(0.05)
    assert mgr.queue_depth("asr") == 5  # finals and commits of admitted sessions still queue
    gate.set()
    await blocker
    results = await asyncio.gather(*admitted, *finals)
    assert all(r.language == "English" for r in results)
    assert await native == "fed"
    assert (await decode(mgr, engine)).language == "English"  # room again
    await mgr.close()


# -- real server processes ------------------------------------------------


def test_unload_mid_queue_over_http_every_request_succeeds(live_server: Any) -> None:
    """Enough 30 s pieces that a second engine run waits while the first runs;
    an unload then arrives: every upload still answers 200 with its text."""
    server = live_server()
    audio = wav_bytes(np.tile(speech(), 8)[: 16000 * 85])  # three pieces per upload

    def upload() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("a.wav", audio)},
            data={"language": "en"},
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        uploads = [pool.submit(upload) for _ in range(4)]
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/health").json()["manager"]["unit_state"]["asr"]["queue_depth"] == 0:
            assert time.monotonic() < deadline, "no decode ever waited in the queue"
            time.sleep(0.01)
        unloaded = httpx.post(f"{server.url}/model/unload", timeout=300)
        answers = [future.result() for future in uploads]
    assert unloaded.status_code == 200 and unloaded.json()["unloaded"] == ["asr"]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all("text" in a.json() for a in answers)
    assert upload().status_code == 200  # and the next request reloads


def test_a_stuck_decode_refuses_work_until_it_returns_then_the_unit_reloads(live_server: Any) -> None:
    """``stall:batch`` makes the first upload's decode take twice the deadline:
    it gets 503 ``decode_timeout``; while it is stuck another upload gets 503
    ``model_unavailable`` at once (nothing else runs on that model) and
    ``/health`` says for how long; once it returns the unit loads a fresh
    model and uploads succeed again."""
    # Stuck from 3 s to 6 s after it starts: room for /health and a second
    # upload to see it on a loaded machine.
    server = live_server(POLYASR_DECODE_TIMEOUT_SEC="3", POLYASR_FAULTS="stall:batch:1")
    audio = wav_bytes(speech()[:32000])

    def upload() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, timeout=120
        )

    def asr_state() -> dict[str, Any]:
        return httpx.get(f"{server.url}/health").json()["manager"]["unit_state"]["asr"]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(upload)
        deadline = time.monotonic() + 60
        while asr_state()["stuck_for"] is None:
            assert time.monotonic() < deadline, "the decode never got stuck"
            # its own answer (decode_timeout) comes the moment it is stuck, never a result
            assert not stuck.done() or stuck.result().status_code == 503, "the decode was not stuck"
            time.sleep(0.02)
        during = upload()
        assert asr_state()["stuck_for"] is not None  # still stuck when it was refused
        answer = stuck.result()
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["error"]["code"] == "decode_timeout"
    assert during.status_code == 503 and during.headers["retry-after"], during.text
    assert during.json()["error"]["code"] == "model_unavailable" and "stuck" in during.text
    deadline = time.monotonic() + 60
    while (state := asr_state())["loads"] < 2:
        assert time.monotonic() < deadline, "the unit did not reload after the stuck call returned"
        time.sleep(0.1)
    assert state["stuck_for"] is None and state["evictions"] == 1
    assert upload().status_code == 200
    assert server.proc.poll() is None


def test_start_up_offline_without_weights_fails_fast_with_one_hint(
    tiny: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub model id, an empty cache and a hub that refuses connections (a
    closed loopback port: nothing here may reach past loopback): the server
    serves degraded within seconds, without the hub client's retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = tiny_env(
        tiny,
        POLYASR_MODEL="Qwen/Qwen3-ASR-0.6B",
        POLYASR_LOG_DIR=str(tmp_path / "logs"),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    del env["HF_HUB_OFFLINE"]
    assert "HF_HUB_OFFLINE" not in os.environ
    started = time.monotonic()
    server = LiveServer(backend, env, tmp_path / "server.log")
    try:
        server.wait_ready(timeout=120)
        ready_after = time.monotonic() - started
        health = httpx.get(f"{server.url}/health").json()
        answers = [
            httpx.post(
                f"{server.url}/v1/audio/transcriptions",
                files={"file": ("a.wav", wav_bytes(speech()))},
                timeout=60,
            )
            for _ in range(3)
        ]
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert health["status"] == "degraded" and health["reasons"][0] == "weights_missing"
    assert all(a.status_code == 503 and "POLYASR_MODEL" in a.json()["error"]["message"] for a in answers)
    assert "Retrying" not in log and "Traceback" not in log, log[-3000:]
    hint = [line for line in log.splitlines() if "polyasr.manager: loading asr failed" in line]
    assert len(hint) == 1, log[-3000:]  # once, not once per request that retried the load
    assert "set POLYASR_MODEL to a local folder" in hint[0] and "HF_HOME" in hint[0]
    assert "http://127.0.0.1:9" in hint[0] and "unreachable" in hint[0]
    problems = [line for line in log.splitlines() if re.search(r"\b(ERROR|WARNING)\b", line)]
    assert problems == hint, log[-3000:]  # the one line the README promises, nothing beside it
    assert ready_after < 60  # the hub client alone retried for ~45 s before this
