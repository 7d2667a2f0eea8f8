"""One decode scheduler per model unit: a worker thread fed by a priority queue.

This replaces a process-wide model lock. Work for a unit (loads, evictions,
decodes) runs on that unit's own thread — MLX needs one thread per model
because Metal streams are thread-local — in priority order, so a final never
waits behind a queue of partials or a long upload, and queued requests of the
same kind are handed to the engine together as one batch.

Whatever the engine does, the thread lives on and every waiter gets an answer:
an engine raising anything (even ``BaseException``) fails that run's waiters
with a ``RuntimeError``; a run past its deadline fails its waiters with
:class:`DecodeTimeout`. A stuck call cannot be interrupted, and a second
thread on the same model is unsafe (static caches and graphs on CUDA, Metal
streams on MLX), so nothing else runs until it returns: the queued work and
any new work fail at once with the unit's "stuck" error, the unit is told
(it reloads its model once the call returns), and the late result is dropped.

Under load the worker gathers a batch for a short window
(``POLYASR_BATCH_WINDOW_MS``) so that batches stay full instead of
alternating between one early arrival and everyone else.
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
# Told how long each run on the worker thread took and how many jobs it had
# (a batch is one run): metrics.
OnRun = Callable[[Priority, float, int], None]
# Told (from a scheduler thread) that a run is stuck past its deadline (True)
# and that the stuck call returned (False).
OnStuck = Callable[[bool], None]
# A batch of more than one that ended this recently is evidence of load: the
# next batch gathers for the window even when it starts alone.
RECENT_LOAD_SEC = 1.0

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


class _JobQueue:
    """The waiting jobs of one unit, most urgent first, with each slot's count
    kept. Not thread-safe on its own: the scheduler holds its lock around it."""

    def __init__(self) -> None:
        self.heap: list[_Job] = []

    def __len__(self) -> int:
        return len(self.heap)

    def head(self) -> int:
        """Priority of the most urgent waiting job (``_IDLE`` when none waits)."""
        return self.heap[0].priority if self.heap else _IDLE

    def push(self, job: _Job, counted: bool = False) -> None:
        """Queue ``job`` (``counted``: its slot already counts it)."""
        if job.slot is not None and not counted:
            job.slot.waiting += 1
        heapq.heappush(self.heap, job)

    def replace_slot(self, slot: JobSlot) -> None:
        """Cancel the jobs of ``slot`` still waiting: a newer one replaces them."""
        stale = [j for j in self.heap if j.slot is slot]
        if stale:
            self._remove(stale)
            for old in stale:
                old.future.cancel()

    def pop(self) -> _Job:
        """The most urgent job, still counted in its slot (see :meth:`taken`)."""
        return heapq.heappop(self.heap)

    def same(self, first: _Job, batch: list[_Job], max_batch: int) -> list[_Job]:
        """Queued jobs that join ``first``'s batch (taken out of the queue, still
        counted), up to ``max_batch``; at most one per slot, since a newer job
        in a slot replaces a queued older one."""
        if first.batch_key is None:
            return []
        slots = {id(j.slot) for j in batch if j.slot is not None}
        same = []
        for job in sorted(self.heap):
            if len(batch) + len(same) >= max_batch:
                break
            if job.batch_key != first.batch_key or job.priority != first.priority:
                continue
            if job.slot is not None:
                if id(job.slot) in slots:
                    continue
                slots.add(id(job.slot))
            same.append(job)
        if same:
            taken = {id(j) for j in same}
            self.heap = [j for j in self.heap if id(j) not in taken]
            heapq.heapify(self.heap)
        return same

    @staticmethod
    def taken(jobs: list[_Job]) -> None:
        """``jobs`` left the queue for good: their slots stop counting them."""
        for job in jobs:
            if job.slot is not None:
                job.slot.waiting -= 1

    def drain_decodes(self) -> list[_Job]:
        """Take out every job but loads and evictions."""
        dropped = [j for j in self.heap if j.priority != Priority.CONTROL]
        self._remove(dropped)
        return dropped

    def _remove(self, jobs: list[_Job]) -> None:
        gone = {id(j) for j in jobs}
        self.heap = [j for j in self.heap if id(j) not in gone]
        heapq.heapify(self.heap)
        self.taken(jobs)


class _BatchWindow:
    """How long a batch waits for company: up to ``seconds`` while there is
    room, when others came with it or a recent batch had several (under load);
    never a final that is alone, never an idle unit's lone request."""

    def __init__(self, seconds: float, max_batch: int) -> None:
        self.seconds = seconds
        self.max_batch = max_batch
        self.loaded_until = 0.0  # monotonic time until which a recent batch says "under load"

    def ran(self, size: int) -> None:
        if size > 1:
            self.loaded_until = time.monotonic() + RECENT_LOAD_SEC

    def wants(self, jobs: list[_Job]) -> bool:
        first = jobs[0]
        if self.seconds <= 0 or first.batch_key is None or len(jobs) >= self.max_batch:
            return False
        if len(jobs) == 1 and first.priority == Priority.FINAL:
            return False
        return len(jobs) > 1 or time.monotonic() < self.loaded_until

    def gather(self, jobs: list[_Job], cv: threading.Condition, queue: _JobQueue) -> bool:
        """Add arrivals of ``jobs[0]``'s kind for the window (``cv`` held). False,
        with ``jobs`` back in ``queue``, if more urgent work arrived meanwhile."""
        first = jobs[0]
        deadline = time.monotonic() + self.seconds
        while len(jobs) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            cv.wait(left)
            if queue.head() < first.priority:
                for job in jobs:
                    queue.push(job, counted=True)
                return False
            jobs.extend(queue.same(first, jobs, self.max_batch))
        return True


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
        *,
        batch_window: float = 0.0,
        on_stuck: OnStuck | None = None,
        stuck_error: Callable[[], Exception] | None = None,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.on_run = on_run
        # Deadline of one run (loads and evictions excepted: the manager times
        # loads itself and adopts a late one); None = no deadline.
        self.run_timeout = run_timeout
        self._window = _BatchWindow(batch_window, max_batch)
        self.on_stuck = on_stuck
        self.stuck_error = stuck_error or (
            lambda: RuntimeError(f"{name}: a decode is stuck past its deadline; retry shortly")
        )
        self._queue = _JobQueue()
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._running = _IDLE  # priority of the job on the thread now
        self._running_retried = False  # the running batch yielded to a final once already
        self._current: list[_Job] | None = None  # the run on the thread
        self._stuck: list[_Job] | None = None  # the run past its deadline, until it returns
        threading.Thread(target=self._loop, name=f"polyasr-{name}", daemon=True).start()

    @property
    def stuck(self) -> bool:
        """A run is past its deadline and has not returned: nothing else runs."""
        return self._stuck is not None

    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        with self._cv:
            return len(self._queue)

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
            return self._queue.head() < self._running

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
            return not self._running_retried and self._queue.head() == Priority.FINAL < self._running

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
            if self._stuck is not None and priority != Priority.CONTROL:
                raise self.stuck_error()
            if slot is not None:
                self._queue.replace_slot(slot)
            self._queue.push(job)
            self._cv.notify()
        return asyncio.wrap_future(future)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while True:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return None
                first = self._queue.pop()
                jobs = [first, *self._queue.same(first, [first], self.max_batch)]
                if self._window.wants(jobs) and not self._window.gather(jobs, self._cv, self._queue):
                    continue  # more urgent work arrived meanwhile: take that first
                self._queue.taken(jobs)
                return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            # A requeued job's future is running already (its waiter still waits).
            live = [j for j in jobs if j.retried or j.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _run(self, live: list[_Job]) -> None:
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
        seconds = time.perf_counter() - began
        with self._cv:
            self._running, self._current = _IDLE, None
            returned = self._stuck is live
            if returned:
                self._stuck = None
                if self.on_stuck is not None:
                    self.on_stuck(False)
            else:
                self._window.ran(len(live))
        if returned:  # its waiters already have DecodeTimeout; the result is dropped
            log.warning("%s: the run past its deadline returned after %.1f s", self.name, seconds)
            return
        self._report(Priority(live[0].priority), seconds, len(live))
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
                self._queue.push(job)
            self._cv.notify()

    def _report(self, priority: Priority, seconds: float, size: int) -> None:
        if self.on_run is None:
            return
        try:
            self.on_run(priority, seconds, size)
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
        """The run passed its deadline: fail its waiters and everything queued.

        The stuck call cannot be interrupted, and nothing else may run on its
        model meanwhile, so queued work fails now (instead of waiting behind a
        call that may never return) and new work is refused until it returns;
        loads and evictions still queue, to run after it.
        """
        with self._cv:
            if self._current is not live or self._stuck is not None:
                return  # it finished just now
            self._stuck = live
            dropped = self._queue.drain_decodes()
            if self.on_stuck is not None:  # under the lock: told before it is told of the return
                self.on_stuck(True)
        timeout = DecodeTimeout(f"{self.name} decode did not finish within {self.run_timeout:g} s")
        for jobs, error in ((live, lambda: timeout), (dropped, self.stuck_error)):
            for job in jobs:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    job.future.set_exception(error())
        log.error(
            "%s: a run passed its %g s deadline; %d queued jobs failed, nothing runs on the model "
            "until it returns",
            self.name,
            self.run_timeout,
            len(dropped),
        )


def runs_or_waits(scheduler: UnitScheduler, priority: Priority) -> bool:
    """Whether work at least as urgent as ``priority`` runs or waits on ``scheduler``'s
    unit (a dictation's words are aligned once no final of the asr unit shares the device)."""
    with scheduler._cv:
        return min(scheduler._running, scheduler._queue.head()) <= priority
