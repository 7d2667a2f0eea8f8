"""One model unit: its model, leases, idle clock, load, eviction and scheduler thread.

The manager decides *which* units may be resident; a unit knows how to be
one. Every call on the model runs on the unit's scheduler thread and is bound
to the model that was resident when it was queued: an eviction (idle sweep,
``POST /model/unload``, a reload) takes the model away from new work at once
but frees it only after the work bound to it has finished, and new work
waits for that before loading a fresh copy — so work is never pulled from
under a decode, and two copies never sit in memory together.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from polyasr.core.engine import Engine
from polyasr.models.scheduler import DEFAULT_MAX_BATCH, BatchFn, JobSlot, Priority, UnitScheduler

log = logging.getLogger("polyasr.manager")


class ModelUnavailable(RuntimeError):
    """A unit cannot be loaded (weights gone, OOM, load timed out)."""


class UnitBroken(ModelUnavailable):
    """A decode is stuck past its deadline: nothing runs on the unit's model
    until it returns and a fresh one is loaded; retry shortly."""

    retry_after = 5


class NotResident(RuntimeError):
    """A resident-only lease found the unit evicted (probes never reload)."""


class UnitObserver:
    """Told about loads, load failures, evictions and every run on a unit's
    thread; each method does nothing unless a subscriber (metrics, health)
    overrides it."""

    def loaded(self, unit: str, seconds: float | None) -> None:
        """``seconds`` is None for a timed-out load adopted after it finished."""

    def load_failed(self, unit: str, reason: str) -> None:
        """A real load failed (not a refusal before loading)."""

    def evicted(self, unit: str) -> None:
        """The unit's model was dropped."""

    def ran(self, unit: str, priority: Priority, seconds: float, size: int) -> None:
        """One run of ``size`` jobs on the unit's thread took ``seconds``."""


class UnitObservers(UnitObserver):
    """Everyone who subscribed, told in the order they subscribed. Each
    subscriber subscribes itself when it is built, after the units it
    watches: the wiring follows the order things are built in."""

    def __init__(self) -> None:
        self.subscribers: list[UnitObserver] = []

    def subscribe(self, observer: UnitObserver) -> None:
        self.subscribers.append(observer)

    def loaded(self, unit: str, seconds: float | None) -> None:
        for observer in self.subscribers:
            observer.loaded(unit, seconds)

    def load_failed(self, unit: str, reason: str) -> None:
        for observer in self.subscribers:
            observer.load_failed(unit, reason)

    def evicted(self, unit: str) -> None:
        for observer in self.subscribers:
            observer.evicted(unit)

    def ran(self, unit: str, priority: Priority, seconds: float, size: int) -> None:
        for observer in self.subscribers:
            observer.ran(unit, priority, seconds, size)


def _trim_heap() -> None:
    """Hand freed C-heap pages back to the OS (glibc only; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class UnitUsage:
    """Who holds a unit and since when it is idle: its leases and its idle clock.

    A lease that counts as *use* (not a health probe) stops the idle clock;
    the clock starts again when the last such lease ends.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.leases = 0
        self.uses = 0  # leases that count as use
        self.last_used: float | None = None
        self.waiters: list[asyncio.Event] = []

    def acquire(self, use: bool) -> None:
        self.leases += 1
        self.uses += use

    def release(self, use: bool) -> None:
        """End one lease; the idle clock starts from here, waiters may proceed."""
        self.leases -= 1
        self.uses -= use
        if use:
            self.touch()
        if self.leases == 0:
            for event in self.waiters:
                event.set()

    def touch(self) -> None:
        self.last_used = self.clock()

    async def wait_unleased(self, deadline: float) -> bool:
        """Wait until no lease is held, until ``deadline`` (on the clock)."""
        while self.leases > 0:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            event = asyncio.Event()
            self.waiters.append(event)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self.waiters.remove(event)
        return True

    def idle_for(self) -> float | None:
        if self.last_used is None:
            return None
        return 0.0 if self.uses else round(self.clock() - self.last_used, 1)

    def idle_expired(self, idle_seconds: float) -> bool:
        """Unleased and unused for ``idle_seconds``."""
        return (
            self.leases == 0 and self.last_used is not None and self.clock() - self.last_used >= idle_seconds
        )


class ModelUnit:
    """A model unit's state and the only way to run work on its model."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        observer: UnitObserver,
        clock: Callable[[], float],
        *,
        load_timeout: float,
        decode_timeout: float | None = None,
        max_queued: int | None = None,
        batch_window: float = 0.0,
        preflight: Callable[[], str | None] = lambda: None,
        before_load: Callable[[ModelUnit], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.observer = observer
        self.clock = clock
        self.load_timeout = load_timeout
        self.max_queued = max_queued
        self.preflight = preflight  # why a load is bound to fail (weights unreachable), if it is
        self.before_load = before_load  # residency policy: make room for this unit
        # The engine says how many clips one decode call takes well (the CUDA
        # engine's largest captured bucket); engines that do not say get the default.
        self.worker = UnitScheduler(
            name,
            max_batch=getattr(engine, "max_batch", DEFAULT_MAX_BATCH),
            on_run=lambda priority, sec, size: observer.ran(name, priority, sec, size),
            run_timeout=decode_timeout,
            batch_window=batch_window,
            on_stuck=lambda stuck: self.stuck.tell(stuck),
            stuck_error=lambda: self.stuck.error(),
        )
        self.model: Any = None
        self.stuck = StuckDecode(self, decode_timeout)
        self.usage = UnitUsage(clock)
        self.loading: asyncio.Task[None] | None = None
        self.stuck_load: asyncio.Future[Any] | None = None
        self.evicting: asyncio.Task[None] | None = None
        self.bound: set[asyncio.Future[Any]] = set()  # queued or running work on ``model``
        self.last_error: str | None = None
        self.loads = 0
        self.evictions = 0
        self.load_seconds: float | None = None

    # -- leases ----------------------------------------------------------

    @asynccontextmanager
    async def lease(self, *, use: bool = True, resident_only: bool = False) -> AsyncIterator[None]:
        """Hold the unit resident for the block, loading it first if needed.

        ``use=False`` leaves the idle clock alone (health probes are not use);
        ``resident_only`` raises :class:`NotResident` instead of loading.
        """
        if resident_only and self.model is None:
            raise NotResident(self.name)
        self.stuck.loop = asyncio.get_running_loop()
        self.usage.acquire(use)
        try:
            if not resident_only:
                await self.ensure()
            if use:
                self.usage.touch()
            yield
        finally:
            self.usage.release(use)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep the unit from idle eviction for the block without loading it
        (a live dictation: the first decode that needs the unit loads it)."""
        self.usage.acquire(use=True)
        try:
            yield
        finally:
            self.usage.release(use=True)

    # -- work --------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Any], priority: Priority, **lease: bool) -> Any:
        """Run ``fn(model)`` on the unit's thread under a lease."""
        async with self.lease(**lease):
            model = await self._model_for_work(priority, lease.get("resident_only", False), shed=False)
            return await self._bind(self.worker.submit(lambda: fn(model), priority))

    async def run_batched(
        self,
        key: str,
        batch_fn: Callable[[Any, list[Any], Callable[[], bool] | None], list[Any]],
        payload: Any,
        priority: Priority,
        slot: JobSlot | None = None,
        **lease: bool,
    ) -> Any:
        """Queue ``payload`` for ``batch_fn(model, payloads, should_stop)``,
        batched with other queued payloads of the same key and priority (see
        :meth:`UnitScheduler.submit_batched` for ``slot``). Work below
        commit priority (partials, probes) is preemptible: ``should_stop``
        tells the engine that something more urgent waits. Batches and commits
        yield to a waiting final and then run again from the queue."""
        requeue = priority in (Priority.BATCH, Priority.COMMIT)
        stop = self.worker.stop_check(priority)
        async with self.lease(**lease):
            model = await self._model_for_work(priority, lease.get("resident_only", False), shed=True)
            run: BatchFn = lambda payloads: batch_fn(model, payloads, stop)  # noqa: E731
            submitted = self.worker.submit_batched(key, run, payload, priority, slot, requeue)
            return await self._bind(submitted)

    async def _model_for_work(self, priority: Priority, resident_only: bool, shed: bool) -> Any:
        """The model new work binds to, loading it if an eviction took it since
        the lease began; admission to a full queue is decided here."""
        while self.model is None:
            if resident_only:
                raise NotResident(self.name)
            await self.ensure()
        if self.max_queued is not None:
            self.worker.admit(priority, self.max_queued, shed)
        return self.model

    def _bind(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self.bound.add(future)
        future.add_done_callback(self.bound.discard)
        return future

    # -- loading -----------------------------------------------------------

    async def ensure(self) -> None:
        """Make the model resident: wait out an eviction, then load (once)."""
        while self.model is None:
            if self.stuck.since is not None:
                raise self.stuck.error()
            if self.evicting is not None:
                await asyncio.shield(self.evicting)
                continue
            if self.loading is None:
                if self.stuck_load is not None:
                    self._adopt_stuck_load()
                    continue
                self.loading = asyncio.get_running_loop().create_task(self._load())
            await asyncio.shield(self.loading)

    def _adopt_stuck_load(self) -> None:
        """A load that outlived its timeout: use its model if it finished since."""
        stuck = self.stuck_load
        assert stuck is not None
        if not stuck.done():
            raise ModelUnavailable(
                f"{self.name} model unavailable: an earlier load has not finished "
                f"after {self.load_timeout:g} s"
            )
        self.stuck_load = None
        if stuck.cancelled() or stuck.exception() is not None:
            return
        self.model = stuck.result()
        self.loads += 1
        self.observer.loaded(self.name, None)

    async def _load(self) -> None:
        try:
            reason = await asyncio.to_thread(self.preflight)
            if reason is not None:
                self._failed(reason)
            if self.before_load is not None:
                await self.before_load(self)
            started = self.clock()
            future = self.worker.submit(lambda: self.engine.load(self.name), Priority.CONTROL)
            try:
                model = await asyncio.wait_for(asyncio.shield(future), self.load_timeout)
            except TimeoutError:
                self.stuck_load = future
                self._failed(f"load did not finish within {self.load_timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - any loader failure is "unavailable"
                self._failed(f"{type(exc).__name__}: {exc}")
            self.model = model
            self.loads += 1
            self.load_seconds = round(self.clock() - started, 3)
            self.last_error = None
            self.usage.touch()
            self.observer.loaded(self.name, self.load_seconds)
            log.info("loaded %s in %.2f s", self.name, self.load_seconds)
        finally:
            self.loading = None

    def _failed(self, reason: str) -> None:
        """Record and raise a failed load; the log gets each new reason once
        (every request retries the load, and an offline server sees many)."""
        if reason != self.last_error:
            log.error("loading %s failed: %s", self.name, reason)
        self.last_error = reason
        self.observer.load_failed(self.name, reason)
        raise ModelUnavailable(f"{self.name} model unavailable: {reason}")

    # -- eviction ----------------------------------------------------------

    async def evict(self) -> bool:
        """Take the model from new work now; free it once its bound work is done.

        Returns whether this call evicted a resident model. Waits for the
        eviction (this one or one already under way) to finish.
        """
        if self.model is None:
            if self.evicting is not None:
                await asyncio.shield(self.evicting)
            return False
        holder, self.model = [self.model], None
        self.usage.last_used = None
        self.evictions += 1
        self.observer.evicted(self.name)
        self.evicting = asyncio.get_running_loop().create_task(self.free(holder, set(self.bound)))
        await asyncio.shield(self.evicting)
        return True

    async def free(self, holder: list[Any], bound: set[asyncio.Future[Any]]) -> None:
        """After the work bound to the old model: drop it on the unit's thread."""
        try:
            if bound:
                await asyncio.wait(bound)

            def release() -> None:
                holder.clear()
                gc.collect()
                self.engine.empty_cache()
                _trim_heap()

            await self.worker.submit(release, Priority.CONTROL)
            log.info("evicted %s", self.name)
        finally:
            self.evicting = None

    # -- status --------------------------------------------------------------

    def idle_for(self) -> float | None:
        return None if self.model is None else self.usage.idle_for()

    def state(self) -> dict[str, Any]:
        """This unit's detail for ``/health``'s ``manager.unit_state``."""
        return {
            "resident": self.model is not None,
            "leases": self.usage.leases,
            "idle_for": self.idle_for(),
            "loads": self.loads,
            "evictions": self.evictions,
            "load_seconds": self.load_seconds,
            "queue_depth": self.worker.depth(),
            "stuck_for": None if self.stuck.since is None else round(self.clock() - self.stuck.since, 1),
            "last_error": self.last_error,
        }


class StuckDecode:
    """The rule for a decode past its deadline on one unit: the call cannot be
    interrupted and a second thread on the model is unsafe, so the model is
    broken for new work (503 ``model_unavailable``) until the call returns;
    then it is dropped and a fresh one loaded.

    The scheduler tells this from its threads; the unit acts on the event loop.
    """

    def __init__(self, unit: ModelUnit, deadline: float | None) -> None:
        self.unit = unit
        self.deadline = deadline
        self.since: float | None = None  # when the decode got stuck; None = not stuck
        self.model: Any = None  # the model it held, dropped once the call returns
        self.loop: asyncio.AbstractEventLoop | None = None  # where the unit lives
        self.reloading: asyncio.Task[None] | None = None

    def error(self) -> UnitBroken:
        """What work gets while the decode is stuck."""
        return UnitBroken(
            f"{self.unit.name} model unavailable: a decode is stuck past its {self.deadline:g} s "
            "deadline; the model reloads once it returns"
        )

    def tell(self, stuck: bool) -> None:
        """From a scheduler thread: hand the news to the event loop."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.changed, stuck)

    def changed(self, stuck: bool) -> None:
        unit = self.unit
        if stuck:
            self.since = unit.clock()
            if unit.model is not None:
                self.model, unit.model = unit.model, None
                unit.usage.last_used = None
                unit.evictions += 1
                unit.observer.evicted(unit.name)
            log.error("%s is broken until its stuck decode returns", unit.name)
            return
        self.since = None
        if self.model is not None:
            holder, self.model = [self.model], None
            loop = asyncio.get_running_loop()
            unit.evicting = loop.create_task(unit.free(holder, set(unit.bound)))
            self.reloading = loop.create_task(self._reload())

    async def _reload(self) -> None:
        """Load a fresh model (a failure is recorded; the next request tries again)."""
        try:
            async with self.unit.lease(use=False):
                log.info("%s reloaded after a stuck decode", self.unit.name)
        except Exception as exc:  # noqa: BLE001 - recorded in last_error; the next request retries
            log.error("%s did not reload after a stuck decode: %s", self.unit.name, exc)
        finally:
            self.reloading = None
