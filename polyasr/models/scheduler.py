"""One decode scheduler per model unit: a worker thread fed by a priority queue.

This replaces a process-wide model lock. Work for a unit (loads, evictions,
decodes) runs on that unit's own thread — MLX needs one thread per model
because Metal streams are thread-local — in priority order, so a final never
waits behind a queue of partials or a long upload, and queued requests of the
same kind are handed to the engine together as one batch.

Whatever the engine does, the thread lives on and every waiter gets an answer:
an engine raising anything (even ``BaseException``) fails that run's waiters
with a ``RuntimeError``; a run past its deadline fails its waiters with
:class:`DecodeTimeout` and a fresh thread takes over the queue, while the stuck
thread's late result is discarded when (if ever) it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from polyasr.core.engine import Preempted


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

log = logging.getLogger("polyasr.scheduler")


class DecodeTimeout(RuntimeError):
    """A run took longer than its deadline (``POLYASR_DECODE_TIMEOUT_SEC``); only
    its own waiters fail (HTTP 503 ``decode_timeout``)."""

    retry_after = 5


class ServerBusy(RuntimeError):
    """Too much decode work is already queued on a unit; retry shortly (HTTP 503
    ``server_busy`` with Retry-After)."""

    retry_after = 2


def _as_exception(exc: BaseException) -> Exception:
    """What a waiter may safely receive: a Future refuses ``StopIteration`` and
    an event loop re-raises ``KeyboardInterrupt``/``SystemExit`` out of itself,
    so anything but a plain ``Exception`` is wrapped."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    wrapped = RuntimeError(f"engine raised {type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped


class JobSlot:
    """A caller's standing place in a unit's queue, one per kind of work it
    repeats (a dictation session's partials, its commits): a newer job in the
    slot replaces a queued older one, and :attr:`queued` says whether one
    still waits. The caller holds the slot; the scheduler keeps the count."""

    def __init__(self) -> None:
        self.waiting = 0  # jobs of this slot in the queue (changed under the scheduler's lock)

    @property
    def queued(self) -> bool:
        return self.waiting > 0


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    batch_key: str | None = field(compare=False)
    slot: JobSlot | None = field(compare=False)
    run: Callable[..., Any] = field(compare=False)
    payload: Any = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)
    # Preempted by a final: goes back to the queue instead of failing (once).
    requeue: bool = field(default=False, compare=False)
    retried: bool = field(default=False, compare=False)


_IDLE = int(Priority.PROBE) + 1  # "priority" of no run at all: anything is more urgent


class UnitScheduler:
    """A worker thread that runs submitted work in priority, then FIFO, order."""

    # A batch runs to completion before anything else on the unit: a cap keeps
    # a queue of long uploads from holding a final for more than one short call.
    def __init__(
        self,
        name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_run: OnRun | None = None,
        run_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.on_run = on_run
        # Deadline of one run (loads and evictions excepted: the manager times
        # loads itself and adopts a late one); None = no deadline.
        self.run_timeout = run_timeout
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._running = _IDLE  # priority of the job on the thread now
        self._running_retried = False  # the running batch yielded to a final once already
        self._current: list[_Job] | None = None  # the run on the live thread
        # Bumped when a stuck run's thread is abandoned: an older thread exits
        # as soon as its run returns, and its results are discarded.
        self._generation = 0
        self._start_thread()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._loop, args=(self._generation,), name=f"polyasr-{self.name}", daemon=True
        )
        thread.start()

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
        slot: JobSlot | None = None,
        requeue: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue ``payload``; queued payloads with the same key and priority go
        to one ``batch_fn(payloads)`` call, which returns one result each.

        A job in a ``slot`` cancels any still-queued job of the same slot: a
        newer partial of a session makes its older, unstarted one stale.
        With ``requeue``, a batch that raises :class:`Preempted` (it yielded to
        a final, see :meth:`final_waiting`) is queued again in its old place
        instead of failing; the second run is not preempted, so a stream of
        finals cannot starve it.
        """
        return self._push(priority, key, slot, batch_fn, payload, requeue)

    def urgent_waiting(self) -> bool:
        """Whether more urgent work waits behind the running job (a final behind
        a partial): a preemptible decode checks this between tokens and yields."""
        with self._cv:
            return bool(self._heap) and self._heap[0].priority < self._running

    def stop_check(self, priority: Priority) -> Callable[[], bool] | None:
        """What a decode of ``priority`` polls between tokens: partials and probes
        yield to anything more urgent, batches and commits to a waiting final
        (and run again from the queue); finals never yield."""
        if priority >= Priority.PARTIAL:
            return self.urgent_waiting
        if priority in (Priority.BATCH, Priority.COMMIT):
            return self.final_waiting
        return None

    def admit(self, priority: Priority, max_queued: int, shed: bool) -> None:
        """At ``max_queued`` waiting jobs: refuse batch work (503 ``server_busy``)
        and, when ``shed``, drop partials and probes (as preempted: a newer one
        comes soon). Finals, commits, native-stream calls (their state must see
        every chunk) and the unit's own loads and evictions always queue, so a
        dictation that was admitted is never refused its result."""
        if self.depth() < max_queued:
            return
        if priority == Priority.BATCH:
            raise ServerBusy(f"{max_queued} decodes already queued on {self.name}; retry shortly")
        if shed and priority >= Priority.PARTIAL:
            raise Preempted(f"{self.name} decode queue is full")

    def final_waiting(self) -> bool:
        """Whether a final waits behind the running batch (and that batch has not
        yielded before): a batch or commit decode checks this between tokens,
        so a final never waits for a whole long batch."""
        with self._cv:
            return (
                not self._running_retried
                and bool(self._heap)
                and self._heap[0].priority == Priority.FINAL < self._running
            )

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _push(
        self,
        priority: Priority,
        key: str | None,
        slot: JobSlot | None,
        run: Callable[..., Any],
        payload: Any,
        requeue: bool = False,
    ) -> asyncio.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job = _Job(int(priority), next(self._seq), key, slot, run, payload, future, requeue)
        with self._cv:
            if self._closed:
                raise RuntimeError(f"scheduler {self.name} is closed")
            if slot is not None:
                stale = [j for j in self._heap if j.slot is slot]
                if stale:
                    self._heap = [j for j in self._heap if j.slot is not slot]
                    heapq.heapify(self._heap)
                    slot.waiting -= len(stale)
                    for old in stale:
                        old.future.cancel()
                slot.waiting += 1
            heapq.heappush(self._heap, job)
            self._cv.notify()
        return asyncio.wrap_future(future)

    def _take(self, generation: int) -> list[_Job] | None:
        with self._cv:
            while not self._heap and not self._closed and generation == self._generation:
                self._cv.wait()
            if generation != self._generation or not self._heap:
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
            for job in jobs:
                if job.slot is not None:
                    job.slot.waiting -= 1
            return jobs

    def _loop(self, generation: int) -> None:
        while (jobs := self._take(generation)) is not None:
            # A requeued job's future is running already (its waiter still waits).
            live = [j for j in jobs if j.retried or j.future.set_running_or_notify_cancel()]
            if live:
                self._run(live, generation)

    def _run(self, live: list[_Job], generation: int) -> None:
        """One engine call for ``live``; every waiter gets a result or an error."""
        with self._cv:
            self._running, self._current = live[0].priority, live
            self._running_retried = any(j.retried for j in live)
        watchdog = self._watch(live)
        began = time.perf_counter()
        outcome: list[Any] | Exception
        try:
            outcome = live[0].run([j.payload for j in live])
            if len(outcome) != len(live):
                outcome = RuntimeError(f"{len(outcome)} results for a batch of {len(live)}")
        except BaseException as exc:  # noqa: BLE001 - the thread outlives any engine failure
            outcome = _as_exception(exc)
        if watchdog is not None:
            watchdog.cancel()
        with self._cv:
            if generation != self._generation:
                return  # abandoned past its deadline: the waiters already have DecodeTimeout
            self._running, self._current = _IDLE, None
        self._report(Priority(live[0].priority), time.perf_counter() - began)
        if isinstance(outcome, Preempted) and all(j.requeue and not j.retried for j in live):
            self._requeue(live)
            return
        for index, job in enumerate(live):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome[index])

    def _requeue(self, jobs: list[_Job]) -> None:
        """Put a batch that yielded to a final back in its old place (same sequence numbers)."""
        with self._cv:
            for job in jobs:
                job.retried = True
                if job.slot is not None:
                    job.slot.waiting += 1
                heapq.heappush(self._heap, job)
            self._cv.notify()

    def _report(self, priority: Priority, seconds: float) -> None:
        if self.on_run is None:
            return
        try:
            self.on_run(priority, seconds)
        except Exception:
            log.exception("%s: run observer failed", self.name)

    def _watch(self, live: list[_Job]) -> threading.Timer | None:
        """Arm the run's deadline (decodes only)."""
        if self.run_timeout is None or live[0].priority == Priority.CONTROL:
            return None
        timer = threading.Timer(self.run_timeout, self._expire, args=(live,))
        timer.daemon = True
        timer.start()
        return timer

    def _expire(self, live: list[_Job]) -> None:
        """The run passed its deadline: fail its waiters, hand the queue to a new thread.

        The stuck call cannot be interrupted; its thread exits when (if ever)
        the call returns. The next runs go to a fresh thread, so one wedged
        decode costs its own request and never the queue behind it. Until it
        returns, the stuck call and the fresh thread share the model: a call
        this far past its deadline is taken to be wedged, not computing.
        """
        with self._cv:
            if self._current is not live:
                return  # it finished just now
            self._generation += 1
            self._running, self._current = _IDLE, None
            self._start_thread()
        error = DecodeTimeout(f"{self.name} decode did not finish within {self.run_timeout:g} s")
        for job in live:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                job.future.set_exception(error)
        log.error("%s: a run passed its %g s deadline; a fresh thread took over", self.name, self.run_timeout)
