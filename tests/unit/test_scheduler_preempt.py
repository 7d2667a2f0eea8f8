"""A final never waits for a whole batch: batches and commits yield to it
between tokens and then run again from the queue (once)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from polyasr.core.engine import Preempted
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import Priority, UnitScheduler


def _yielding(events: list[str], should_stop: Any, name: str, steps: int = 200) -> list[str]:
    """A decode of ``steps`` tokens that checks ``should_stop`` between them."""
    events.append(f"{name} start")
    for _ in range(steps):
        if should_stop is not None and should_stop():
            events.append(f"{name} yields")
            raise Preempted("a final waits")
        time.sleep(0.005)
    events.append(f"{name} done")
    return [name]


async def test_a_batch_yields_to_a_final_and_runs_again_once() -> None:
    sched = UnitScheduler("t")
    events: list[str] = []
    started = threading.Event()

    def batch(payloads: list[str]) -> list[str]:
        started.set()
        return _yielding(events, sched.final_waiting, "batch")

    def final(payloads: list[str]) -> list[str]:
        events.append("final")
        return ["final"]

    upload = sched.submit_batched("tx", batch, "b", Priority.BATCH, requeue=True)
    await asyncio.to_thread(started.wait, 30)
    first = sched.submit_batched("tx", final, "f1", Priority.FINAL)
    assert await first == "final"
    while events.count("batch start") < 2:  # the batch runs again ...
        await asyncio.sleep(0.005)
    second = sched.submit_batched("tx", final, "f2", Priority.FINAL)
    assert await upload == "batch"  # ... and this time no final stops it
    assert await second == "final"
    assert events == ["batch start", "batch yields", "final", "batch start", "batch done", "final"]
    sched.close()


async def test_without_requeue_a_preempted_batch_fails_as_before() -> None:
    sched = UnitScheduler("t")

    def batch(payloads: list[str]) -> list[str]:
        raise Preempted("yielded")

    try:
        await sched.submit_batched("tx", batch, "p", Priority.PARTIAL)
    except Preempted:
        pass
    else:
        raise AssertionError("a partial that yields is dropped, not requeued")
    sched.close()


async def test_manager_lets_batches_and_commits_yield_to_finals_only(
    make_settings: Any, make_engine: Any
) -> None:
    mgr = AsrModelManager(make_engine(make_settings()), coload=True, idle_seconds=0, load_timeout=300)
    polls: dict[Priority, Any] = {}

    def record(_model: Any, payloads: list[Priority], should_stop: Any) -> list[Priority]:
        polls[payloads[0]] = should_stop
        return payloads

    for priority in (Priority.FINAL, Priority.BATCH, Priority.COMMIT, Priority.PARTIAL):
        await mgr.unit("asr").run_batched("k", record, priority, priority)
    unit = mgr._units["asr"].worker
    assert polls[Priority.FINAL] is None
    assert polls[Priority.BATCH] == unit.final_waiting == polls[Priority.COMMIT]
    assert polls[Priority.PARTIAL] == unit.urgent_waiting

    events: list[str] = []
    started = threading.Event()

    def long_batch(_model: Any, payloads: list[str], should_stop: Any) -> list[str]:
        started.set()
        return _yielding(events, should_stop, "batch")

    upload = asyncio.ensure_future(mgr.unit("asr").run_batched("tx", long_batch, "b", Priority.BATCH))
    await asyncio.to_thread(started.wait, 300)
    final = await mgr.unit("asr").run_batched("tx", lambda _m, p, _s: ["final"], "f", Priority.FINAL)
    assert final == "final" and events[:2] == ["batch start", "batch yields"]
    assert await upload == "batch" and events[-1] == "batch done"
    await mgr.close()
