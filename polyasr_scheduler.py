"""One decode scheduler per model unit: a worker thread fed by a priority queue.

This replaces a process-wide model lock. Work for a unit (loads, evictions,
decodes) runs on that unit's own thread — MLX needs one thread per model
because Metal streams are thread-local — in priority order, so a final never
waits behind a queue of partials or a long upload, and queued requests of the
same kind are handed to the engine together as one batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    """Lower runs first (contract: final > batch > commit > partial)."""

    CONTROL = 0  # loads and evictions of the unit itself
    FINAL = 1
    BATCH = 2
    COMMIT = 3
    PARTIAL = 4
    PROBE = 5  # health probe: only when nothing else waits


BatchFn = Callable[[list[Any]], list[Any]]
# Clips per engine call unless the engine says otherwise (``Engine.max_batch``).
DEFAULT_MAX_BATCH = 8
# Told how long each run on the worker thread took (a batch is one run): metrics.
OnRun = Callable[[Priority, float], None]


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    batch_key: str | None = field(compare=False)
    replace_key: str | None = field(compare=False)
    run: Callable[..., Any] = field(compare=False)
    payload: Any = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)


class UnitScheduler:
    """A worker thread that runs submitted work in priority, then FIFO, order."""

    # A batch runs to completion before anything else on the unit: a cap keeps
    # a queue of long uploads from holding a final for more than one short call.
    def __init__(self, name: str, max_batch: int = DEFAULT_MAX_BATCH, on_run: OnRun | None = None) -> None:
        self.name = name
        self.max_batch = max_batch
        self.on_run = on_run
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._running = int(Priority.PROBE) + 1  # priority of the job on the thread now
        self._thread = threading.Thread(target=self._loop, name=f"polyasr-{name}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        with self._cv:
            return len(self._heap)

    def submit(self, fn: Callable[[], Any], priority: Priority) -> asyncio.Future[Any]:
        """Run ``fn()`` on the worker thread; await the returned future."""
        return self._push(priority, None, None, lambda _payloads: [fn()], None)

    def submit_batched(
        self,
        key: str,
        batch_fn: BatchFn,
        payload: Any,
        priority: Priority,
        replace_key: str | None = None,
    ) -> asyncio.Future[Any]:
        """Queue ``payload``; queued payloads with the same key and priority go
        to one ``batch_fn(payloads)`` call, which returns one result each.

        A job with a ``replace_key`` cancels any still-queued job with the same
        key: a newer partial of a session makes its older, unstarted one stale.
        """
        return self._push(priority, key, replace_key, batch_fn, payload)

    def urgent_waiting(self) -> bool:
        """Whether more urgent work waits behind the running job (a final behind
        a partial): a preemptible decode checks this between tokens and yields."""
        with self._cv:
            return bool(self._heap) and self._heap[0].priority < self._running

    def is_queued(self, replace_key: str) -> bool:
        """Whether a job with ``replace_key`` waits (submitted, not yet started)."""
        with self._cv:
            return any(j.replace_key == replace_key for j in self._heap)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _push(
        self,
        priority: Priority,
        key: str | None,
        replace_key: str | None,
        run: Callable[..., Any],
        payload: Any,
    ) -> asyncio.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job = _Job(int(priority), next(self._seq), key, replace_key, run, payload, future)
        with self._cv:
            if self._closed:
                raise RuntimeError(f"scheduler {self.name} is closed")
            if replace_key is not None:
                stale = [j for j in self._heap if j.replace_key == replace_key]
                if stale:
                    self._heap = [j for j in self._heap if j.replace_key != replace_key]
                    heapq.heapify(self._heap)
                    for old in stale:
                        old.future.cancel()
            heapq.heappush(self._heap, job)
            self._cv.notify()
        return asyncio.wrap_future(future)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._heap and not self._closed:
                self._cv.wait()
            if not self._heap:
                return None
            first = heapq.heappop(self._heap)
            jobs = [first]
            if first.batch_key is not None:
                same = [
                    j
                    for j in sorted(self._heap)
                    if j.batch_key == first.batch_key and j.priority == first.priority
                ][: self.max_batch - 1]
                if same:
                    taken = {id(j) for j in same}
                    self._heap = [j for j in self._heap if id(j) not in taken]
                    heapq.heapify(self._heap)
                    jobs.extend(same)
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            with self._cv:
                self._running = live[0].priority
            began = time.perf_counter()
            try:
                results = live[0].run([j.payload for j in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(live)}")
            except Exception as exc:  # noqa: BLE001 - handed to every waiter
                if isinstance(exc, StopIteration):  # a Future refuses to carry one
                    exc = RuntimeError(f"engine raised StopIteration: {exc}")
                for job in live:
                    job.future.set_exception(exc)
                continue
            finally:
                with self._cv:
                    self._running = int(Priority.PROBE) + 1
                if self.on_run is not None:
                    self.on_run(Priority(live[0].priority), time.perf_counter() - began)
            for job, result in zip(live, results, strict=True):
                job.future.set_result(result)
