"""The per-unit scheduler: priority order and batching of compatible work."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from polyasr.models.scheduler import Priority, UnitScheduler


async def test_priority_order_and_batching() -> None:
    sched = UnitScheduler("t")
    gate = threading.Event()
    calls: list[list[str]] = []

    def batch(payloads: list[str]) -> list[str]:
        calls.append(list(payloads))
        return [p.upper() for p in payloads]

    blocker = sched.submit(gate.wait, Priority.CONTROL)
    await asyncio.sleep(0.05)  # the worker is now busy with the blocker
    partials = [sched.submit_batched("tx", batch, f"p{i}", Priority.PARTIAL) for i in range(3)]
    batch_req = sched.submit_batched("tx", batch, "b", Priority.BATCH)
    finals = [sched.submit_batched("tx", batch, f"f{i}", Priority.FINAL) for i in range(2)]
    assert sched.depth() == 6
    gate.set()
    await blocker
    assert await asyncio.gather(*finals) == ["F0", "F1"]
    assert await batch_req == "B"
    assert await asyncio.gather(*partials) == ["P0", "P1", "P2"]
    # finals first (one engine call for both), then the batch request, then partials together
    assert calls == [["f0", "f1"], ["b"], ["p0", "p1", "p2"]]
    sched.close()


async def test_errors_reach_every_waiter_and_the_worker_survives() -> None:
    sched = UnitScheduler("t")

    def boom(payloads: list[int]) -> list[int]:
        raise ValueError("bad batch")

    try:
        await sched.submit_batched("x", boom, 1, Priority.BATCH)
    except ValueError as exc:
        assert "bad batch" in str(exc)
    else:
        raise AssertionError("expected the engine error")
    assert await sched.submit(lambda: 42, Priority.BATCH) == 42
    sched.close()


async def test_urgent_waiting_tells_a_running_job_to_yield() -> None:
    sched = UnitScheduler("t")
    seen: list[bool] = []
    release = threading.Event()

    def partial() -> None:
        release.wait(5)
        seen.append(sched.urgent_waiting())

    running = sched.submit(partial, Priority.PARTIAL)
    await asyncio.sleep(0.05)
    later_partial = sched.submit(lambda: None, Priority.PARTIAL)
    assert not sched.urgent_waiting()  # another partial is not more urgent
    final = sched.submit(lambda: "final", Priority.FINAL)
    release.set()
    await running
    assert seen == [True]
    assert await final == "final"
    await later_partial
    assert not sched.urgent_waiting()
    sched.close()


async def test_each_run_is_reported_once_with_its_priority_duration_and_size() -> None:
    runs: list[tuple[Priority, float, int]] = []
    sched = UnitScheduler("t", on_run=lambda *run: runs.append(run))
    gate = threading.Event()
    blocker = sched.submit(gate.wait, Priority.CONTROL)
    await asyncio.sleep(0.05)

    def slow(payloads: list[str]) -> list[str]:
        time.sleep(0.05)
        return payloads

    def boom(payloads: list[str]) -> list[str]:
        raise ValueError("bad batch")

    partials = [sched.submit_batched("tx", slow, f"p{i}", Priority.PARTIAL) for i in range(3)]
    failing = sched.submit_batched("other", boom, "x", Priority.FINAL)
    gate.set()
    await blocker
    assert await asyncio.gather(*partials) == ["p0", "p1", "p2"]
    with pytest.raises(ValueError):
        await failing
    # the blocker, the failed final, then the three partials as one run
    assert [(priority, size) for priority, _, size in runs] == [
        (Priority.CONTROL, 1),
        (Priority.FINAL, 1),
        (Priority.PARTIAL, 3),
    ]
    assert runs[2][1] >= 0.05
    sched.close()


async def test_an_engine_raising_stop_iteration_does_not_hang_its_waiter() -> None:
    sched = UnitScheduler("t")

    def exhausted() -> None:
        next(iter([]))

    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(sched.submit(exhausted, Priority.BATCH), 5)
    assert await sched.submit(lambda: "alive", Priority.BATCH) == "alive"
    sched.close()


@pytest.mark.parametrize("fault", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_a_base_exception_from_the_engine_never_kills_the_thread(fault: type[BaseException]) -> None:
    sched = UnitScheduler("t")

    def crash(payloads: list[int]) -> list[int]:
        raise fault("from a library")

    waiters = [sched.submit_batched("x", crash, i, Priority.BATCH) for i in range(2)]
    for waiter in waiters:
        with pytest.raises(RuntimeError, match=f"engine raised {fault.__name__}"):
            await asyncio.wait_for(waiter, 5)
    assert await asyncio.wait_for(sched.submit(lambda: "alive", Priority.BATCH), 5) == "alive"
    sched.close()


async def test_a_run_past_its_deadline_fails_its_queue_and_nothing_runs_until_it_returns() -> None:
    """Two threads on one model are unsafe: a stuck run fails its own waiters
    with DecodeTimeout and the queued work with the unit's error at once, new
    work is refused while it hangs, loads still queue (to run after it), and
    the unit is told when it got stuck and when the call returned."""
    from polyasr.models.scheduler import DecodeTimeout

    runs: list[Priority] = []
    told: list[bool] = []
    sched = UnitScheduler(
        "t",
        run_timeout=0.3,
        on_run=lambda priority, _sec, _size: runs.append(priority),
        on_stuck=told.append,
        stuck_error=lambda: LookupError("stuck"),
    )
    release = threading.Event()
    threads: list[int] = []

    def wedged() -> str:
        threads.append(threading.get_ident())
        release.wait(10)
        return "late"

    stuck = sched.submit(wedged, Priority.BATCH)
    await asyncio.sleep(0.05)
    behind = sched.submit(lambda: threading.get_ident(), Priority.FINAL)
    with pytest.raises(DecodeTimeout, match=r"within 0\.3 s"):
        await asyncio.wait_for(stuck, 5)
    with pytest.raises(LookupError):
        await asyncio.wait_for(behind, 1)  # failed at once, not run beside the stuck call
    assert told == [True] and sched.stuck
    with pytest.raises(LookupError):
        sched.submit(lambda: "refused", Priority.PARTIAL)
    load = sched.submit(lambda: threading.get_ident(), Priority.CONTROL)
    await asyncio.sleep(0.2)
    assert not load.done()  # a load waits for the stuck call, on the same thread
    release.set()
    assert await asyncio.wait_for(load, 5) == threads[0]
    assert told == [True, False] and not sched.stuck
    assert runs == [Priority.CONTROL]  # the late result is dropped; nothing is reported for it
    assert await asyncio.wait_for(sched.submit(lambda: "still", Priority.BATCH), 5) == "still"
    sched.close()
