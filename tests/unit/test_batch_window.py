"""The scheduler's batching window, with a scripted engine: under load a batch
gathers for a short, bounded window so batches stay full instead of
alternating between one early arrival and everyone else; a lone request on an
idle unit and a final that is alone never wait; more urgent work that arrives
during the window runs first."""

from __future__ import annotations

import asyncio
import threading
import time

from polyasr.models.scheduler import Priority, UnitScheduler

CLIENTS = 16
ROUNDS = 6


class ScriptedEngine:
    """Each call takes ``seconds`` whatever the batch, like a GPU decode that is
    launch-bound; it records every batch's size."""

    def __init__(self, seconds: float = 0.03) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, payloads: list[int]) -> list[int]:
        self.sizes.append(len(payloads))
        time.sleep(self.seconds)
        return payloads


async def closed_loop(window: float) -> list[int]:
    """``CLIENTS`` clients, each sending its next request a moment after its
    last answer (a request's own work before it queues); the batch sizes."""
    engine = ScriptedEngine()
    sched = UnitScheduler("t", max_batch=CLIENTS, batch_window=window)

    async def client(index: int) -> None:
        await asyncio.sleep(0.002 * index)  # staggered arrivals
        for _ in range(ROUNDS):
            await sched.submit_batched("k", engine, index, Priority.BATCH)
            await asyncio.sleep(0.003)

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(CLIENTS))), 30)
    sched.close()
    return engine.sizes


async def test_under_load_batches_stay_full_with_the_window_and_alternate_without() -> None:
    without = await closed_loop(0.0)
    within = await closed_loop(0.02)
    assert sum(without) == sum(within) == CLIENTS * ROUNDS
    # Without a window the first arrival runs alone and the rest form the next
    # batch: small and large alternate. With it, every batch after the first
    # holds (nearly) everyone.
    assert min(without[1:]) <= CLIENTS // 4, without
    assert min(within[1:-1], default=CLIENTS) >= CLIENTS // 2, within
    assert len(within) < len(without)


async def test_a_lone_request_on_an_idle_unit_and_a_lone_final_never_wait() -> None:
    engine = ScriptedEngine(seconds=0.0)
    sched = UnitScheduler("t", max_batch=8, batch_window=0.5)
    began = time.monotonic()
    assert await sched.submit_batched("k", engine, 1, Priority.BATCH) == 1
    assert time.monotonic() - began < 0.25  # idle: nothing else queued, no recent batch
    gate = threading.Event()
    blocker = sched.submit(gate.wait, Priority.CONTROL)
    await asyncio.sleep(0.05)
    several = [sched.submit_batched("k", engine, i, Priority.BATCH) for i in range(3)]
    gate.set()
    await blocker
    await asyncio.gather(*several)  # a batch of several: the unit is now "under load"
    began = time.monotonic()
    assert await sched.submit_batched("k", engine, 9, Priority.FINAL) == 9
    assert time.monotonic() - began < 0.25  # a final alone runs at once, load or not
    assert engine.sizes == [1, 3, 1]
    sched.close()


async def test_more_urgent_work_arriving_during_the_window_runs_first() -> None:
    order: list[str] = []
    sched = UnitScheduler("t", max_batch=8, batch_window=0.5)
    gate = threading.Event()
    blocker = sched.submit(gate.wait, Priority.CONTROL)
    await asyncio.sleep(0.05)

    def record(name: str) -> object:
        def run(payloads: list[int]) -> list[int]:
            order.append(f"{name}x{len(payloads)}")
            return payloads

        return run

    batch = [sched.submit_batched("k", record("batch"), i, Priority.BATCH) for i in range(2)]
    gate.set()
    await blocker
    await asyncio.sleep(0.05)  # the two batch jobs are gathering for more
    began = time.monotonic()
    assert await sched.submit_batched("f", record("final"), 7, Priority.FINAL) == 7
    assert time.monotonic() - began < 0.25  # not after the window
    await asyncio.gather(*batch)
    assert order == ["finalx1", "batchx2"]
    sched.close()
