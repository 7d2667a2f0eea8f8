"""Model manager: which units are resident, and for how long.

Units ``asr`` and ``align`` load lazily, may co-reside (``POLYASR_COLOAD=1``)
or evict each other (``0``), and are evicted after ``POLYASR_IDLE_EVICT_SECONDS``
without use. Each unit keeps its own idle clock, so a busy ``asr`` never pins
an idle ``align``. Using a unit is a *lease*: while any lease is held (a decode
in flight, a live dictation) the unit is never evicted, and its idle clock
starts only when the last lease ends. All model work runs on the unit's
scheduler thread, so a load or an eviction never races a decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyasr_engine import UNITS, Engine
from polyasr_scheduler import DEFAULT_MAX_BATCH, BatchFn, Priority, UnitScheduler

log = logging.getLogger("polyasr.manager")

SWEEP_INTERVAL_SEC = 10.0
# How long a load waits for another unit's lease to end when only one unit may
# be resident, before answering "busy" (HTTP 503 + Retry-After).
BUSY_WAIT_SEC = 10.0


class ModelUnavailable(RuntimeError):
    """A unit cannot be loaded (weights gone, OOM, load timed out)."""


class ModelBusy(RuntimeError):
    """One-resident mode and another unit is in use; retry shortly."""

    retry_after = 5


class NotResident(RuntimeError):
    """A resident-only lease found the unit evicted (probes never reload)."""


class ManagerObserver(Protocol):
    """Told about loads, evictions and every run on a unit's thread (metrics)."""

    def loaded(self, unit: str, seconds: float | None) -> None:
        """``seconds`` is None for a timed-out load adopted after it finished."""

    def evicted(self, unit: str) -> None: ...

    def ran(self, unit: str, priority: Priority, seconds: float) -> None: ...


class _Unobserved:
    def loaded(self, unit: str, seconds: float | None) -> None:
        pass

    def evicted(self, unit: str) -> None:
        pass

    def ran(self, unit: str, priority: Priority, seconds: float) -> None:
        pass


@dataclass
class _Unit:
    name: str
    worker: UnitScheduler
    model: Any = None
    leases: int = 0
    uses: int = 0  # leases that count as use (not health probes)
    last_used: float | None = None
    loading: asyncio.Task[None] | None = None
    stuck_load: asyncio.Future[Any] | None = None
    last_error: str | None = None
    loads: int = 0
    evictions: int = 0
    load_seconds: float | None = None
    waiters: list[asyncio.Event] = field(default_factory=list)


def _trim_heap() -> None:
    """Hand freed C-heap pages back to the OS (glibc only; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class AsrModelManager:
    """Residency, leases and idle eviction of the engine's model units."""

    def __init__(
        self,
        engine: Engine,
        *,
        coload: bool,
        idle_seconds: float,
        load_timeout: float,
        on_load_failure: Callable[[str, str], None] | None = None,
        observer: ManagerObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.coload = coload
        self.idle_seconds = idle_seconds
        self.load_timeout = load_timeout
        self.on_load_failure = on_load_failure
        self.clock = clock
        self.observer: ManagerObserver = observer or _Unobserved()
        self._units = {name: _Unit(name, self._scheduler(name)) for name in UNITS}
        self._sweeper: asyncio.Task[None] | None = None

    def _scheduler(self, name: str) -> UnitScheduler:
        # The engine says how many clips one decode call takes well (the CUDA
        # engine's largest captured bucket); engines that do not say get the default.
        max_batch = getattr(self.engine, "max_batch", DEFAULT_MAX_BATCH)
        return UnitScheduler(
            name, max_batch=max_batch, on_run=lambda priority, sec: self.observer.ran(name, priority, sec)
        )

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the idle sweep (when eviction is enabled)."""
        if self.idle_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for unit in self._units.values():
            unit.worker.close()

    # -- using a unit ----------------------------------------------------

    @asynccontextmanager
    async def lease(self, name: str, *, use: bool = True, resident_only: bool = False) -> AsyncIterator[None]:
        """Hold ``name`` resident for the block, loading it first if needed.

        ``use=False`` leaves the idle clock alone (health probes are not use);
        ``resident_only`` raises :class:`NotResident` instead of loading.
        """
        unit = self._units[name]
        if resident_only and unit.model is None:
            raise NotResident(name)
        unit.leases += 1
        unit.uses += use
        try:
            await self._ensure(unit)
            if use:
                unit.last_used = self.clock()
            yield
        finally:
            self._release(unit, use)

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Keep ``name`` from being evicted for the block without loading it
        (a live dictation: the first decode that needs the unit loads it)."""
        unit = self._units[name]
        unit.leases += 1
        unit.uses += 1
        try:
            yield
        finally:
            self._release(unit, use=True)

    def _release(self, unit: _Unit, use: bool) -> None:
        """End one lease; the idle clock starts from here, waiters may proceed."""
        unit.leases -= 1
        unit.uses -= use
        if use:
            unit.last_used = self.clock()
        if unit.leases == 0:
            for event in unit.waiters:
                event.set()

    def touch(self, name: str) -> None:
        """Count as use now (a live dictation's accepted audio frame)."""
        self._units[name].last_used = self.clock()

    async def run(self, name: str, fn: Callable[[Any], Any], priority: Priority, **lease: bool) -> Any:
        """Run ``fn(model)`` on the unit's thread under a lease."""
        unit = self._units[name]
        async with self.lease(name, **lease):
            return await unit.worker.submit(lambda: fn(unit.model), priority)

    async def run_batched(
        self,
        name: str,
        key: str,
        batch_fn: Callable[[Any, list[Any], Callable[[], bool] | None], list[Any]],
        payload: Any,
        priority: Priority,
        replace_key: str | None = None,
        **lease: bool,
    ) -> Any:
        """Queue ``payload`` for ``batch_fn(model, payloads, should_stop)``,
        batched with other queued payloads of the same key and priority (see
        :meth:`UnitScheduler.submit_batched` for ``replace_key``). Work below
        commit priority (partials, probes) is preemptible: ``should_stop``
        tells the engine that something more urgent waits."""
        unit = self._units[name]
        stop = unit.worker.urgent_waiting if priority >= Priority.PARTIAL else None
        run: BatchFn = lambda payloads: batch_fn(unit.model, payloads, stop)  # noqa: E731
        async with self.lease(name, **lease):
            return await unit.worker.submit_batched(key, run, payload, priority, replace_key)

    def is_queued(self, name: str, replace_key: str) -> bool:
        return self._units[name].worker.is_queued(replace_key)

    # -- loading and eviction --------------------------------------------

    async def _ensure(self, unit: _Unit) -> None:
        if unit.model is not None:
            return
        if unit.loading is None:
            if unit.stuck_load is not None:
                self._adopt_stuck_load(unit)
                if unit.model is not None:
                    return
            unit.loading = asyncio.get_running_loop().create_task(self._load(unit))
        await asyncio.shield(unit.loading)

    def _adopt_stuck_load(self, unit: _Unit) -> None:
        """A load that outlived its timeout: use its model if it finished since."""
        stuck = unit.stuck_load
        assert stuck is not None
        if not stuck.done():
            raise ModelUnavailable(
                f"{unit.name} model unavailable: an earlier load has not finished "
                f"after {self.load_timeout:g} s"
            )
        unit.stuck_load = None
        if not stuck.cancelled() and stuck.exception() is None:
            unit.model = stuck.result()
            unit.loads += 1
            self.observer.loaded(unit.name, None)

    async def _load(self, unit: _Unit) -> None:
        try:
            if not self.coload:
                await self._make_room(unit)
            started = self.clock()
            future = unit.worker.submit(lambda: self.engine.load(unit.name), Priority.CONTROL)
            try:
                model = await asyncio.wait_for(asyncio.shield(future), self.load_timeout)
            except TimeoutError:
                unit.stuck_load = future
                self._failed(unit, f"load did not finish within {self.load_timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - any loader failure is "unavailable"
                self._failed(unit, f"{type(exc).__name__}: {exc}")
            unit.model = model
            unit.loads += 1
            unit.load_seconds = round(self.clock() - started, 3)
            unit.last_error = None
            unit.last_used = self.clock()
            self.observer.loaded(unit.name, unit.load_seconds)
            log.info("loaded %s in %.2f s", unit.name, unit.load_seconds)
        finally:
            unit.loading = None

    def _failed(self, unit: _Unit, reason: str) -> None:
        unit.last_error = reason
        log.error("loading %s failed: %s", unit.name, reason)
        if self.on_load_failure is not None:
            self.on_load_failure(unit.name, reason)
        raise ModelUnavailable(f"{unit.name} model unavailable: {reason}")

    async def _make_room(self, wanted: _Unit) -> None:
        """One-resident mode: evict every other unit, waiting briefly for leases."""
        deadline = self.clock() + BUSY_WAIT_SEC
        for other in self._units.values():
            if other is wanted:
                continue
            while other.leases > 0:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise ModelBusy(
                        f"{other.name} is in use and only one model may be resident "
                        "(POLYASR_COLOAD=0); retry shortly"
                    )
                event = asyncio.Event()
                other.waiters.append(event)
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    pass
                finally:
                    other.waiters.remove(event)
            if other.model is not None:
                await self._evict(other)

    async def _evict(self, unit: _Unit) -> None:
        """Drop the model and free its memory, on the unit's own thread."""
        holder = [unit.model]
        unit.model = None
        unit.last_used = None
        unit.evictions += 1
        self.observer.evicted(unit.name)

        def release() -> None:
            holder.clear()
            gc.collect()
            self.engine.empty_cache()
            _trim_heap()

        await unit.worker.submit(release, Priority.CONTROL)
        log.info("evicted %s", unit.name)

    async def evict_idle(self) -> list[str]:
        """Evict units unused for longer than the idle window (never leased ones)."""
        if self.idle_seconds <= 0:
            return []
        now = self.clock()
        evicted = []
        for unit in self._units.values():
            if (
                unit.model is not None
                and unit.leases == 0
                and unit.last_used is not None
                and now - unit.last_used >= self.idle_seconds
            ):
                await self._evict(unit)
                evicted.append(unit.name)
        return sorted(evicted)

    async def unload_all(self) -> list[str]:
        """Evict every resident unit now, after in-flight work on it (§4.2)."""
        evicted = []
        for unit in self._units.values():
            if unit.model is not None:
                await self._evict(unit)
                evicted.append(unit.name)
        return sorted(evicted)

    async def reload(self, name: str) -> bool:
        """Reload a resident, unleased unit in place (probe self-heal)."""
        unit = self._units[name]
        if unit.model is None or unit.leases > 0:
            return False
        await self._evict(unit)
        try:
            async with self.lease(name, use=False):
                pass
        except ModelUnavailable:
            return False
        return True

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_SEC, self.idle_seconds))
            try:
                await self.evict_idle()
            except Exception:
                log.exception("idle sweep failed")

    # -- status ----------------------------------------------------------

    def is_resident(self, name: str) -> bool:
        return self._units[name].model is not None

    def is_busy(self, name: str) -> bool:
        """In real use right now (a health probe does not count)."""
        return self._units[name].uses > 0

    def queue_depth(self, name: str) -> int:
        return self._units[name].worker.depth()

    def idle_for(self, name: str) -> float | None:
        unit = self._units[name]
        if unit.model is None or unit.last_used is None:
            return None
        return 0.0 if unit.uses else round(self.clock() - unit.last_used, 1)

    def status(self) -> dict[str, Any]:
        """The contract's manager block, plus per-unit detail under ``unit_state``."""
        resident = sorted(n for n, u in self._units.items() if u.model is not None)
        idles = [i for n in resident if (i := self.idle_for(n)) is not None]
        return {
            "resident": resident,
            "coload": self.coload,
            "idle_seconds": int(self.idle_seconds)
            if float(self.idle_seconds).is_integer()
            else self.idle_seconds,
            "idle_for": min(idles) if idles else None,
            "units": list(UNITS),
            "unit_state": {
                name: {
                    "resident": unit.model is not None,
                    "leases": unit.leases,
                    "idle_for": self.idle_for(name),
                    "loads": unit.loads,
                    "evictions": unit.evictions,
                    "load_seconds": unit.load_seconds,
                    "queue_depth": unit.worker.depth(),
                    "last_error": unit.last_error,
                }
                for name, unit in self._units.items()
            },
        }
