"""Model manager: which units are resident, and for how long.

Units ``asr`` and ``align`` load lazily, may co-reside (``POLYASR_COLOAD=1``)
or evict each other (``0``), and are evicted after ``POLYASR_IDLE_EVICT_SECONDS``
without use. Each unit (:mod:`polyasr.models.unit`) keeps its own idle clock, leases
and scheduler thread, so a busy ``asr`` never pins an idle ``align``; this
module is only the residency policy over them, the idle sweep and the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from polyasr.core.engine import UNITS, Engine
from polyasr.core.weights import cannot_load
from polyasr.models.scheduler import Priority
from polyasr.models.unit import ModelUnavailable, ModelUnit, UnitObservers

log = logging.getLogger("polyasr.manager")

SWEEP_INTERVAL_SEC = 10.0
# How long a load waits for another unit's lease to end when only one unit may
# be resident, before answering "busy" (HTTP 503 + Retry-After).
BUSY_WAIT_SEC = 10.0
# The setting that names each unit's model, for the "where are the weights" hint.
MODEL_SETTINGS = {"asr": "POLYASR_MODEL", "align": "POLYASR_ALIGNER_MODEL"}


class ModelBusy(RuntimeError):
    """One-resident mode and another unit is in use; retry shortly."""

    retry_after = 5


class AsrModelManager:
    """Residency policy, idle sweep and status over the engine's model units."""

    def __init__(
        self,
        engine: Engine,
        *,
        coload: bool,
        idle_seconds: float,
        load_timeout: float,
        decode_timeout: float | None = None,
        max_queued: int | None = None,
        batch_window: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.coload = coload
        self.idle_seconds = idle_seconds
        self.clock = clock
        # Metrics and health subscribe themselves here once they are built.
        self.observers = UnitObservers()
        model_ids = {"asr": engine.model_id, "align": engine.aligner_id}
        self._units = {
            name: ModelUnit(
                name,
                engine,
                self.observers,
                clock,
                load_timeout=load_timeout,
                decode_timeout=decode_timeout,
                max_queued=max_queued,
                batch_window=batch_window,
                preflight=lambda name=name: cannot_load(model_ids[name], MODEL_SETTINGS[name]),
                before_load=None if coload else self._make_room,
            )
            for name in UNITS
        }
        self._sweeper: asyncio.Task[None] | None = None

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

    def lease(
        self, name: str, *, use: bool = True, resident_only: bool = False
    ) -> AbstractAsyncContextManager[None]:
        """Hold ``name`` resident for the block (see :meth:`ModelUnit.lease`)."""
        return self._units[name].lease(use=use, resident_only=resident_only)

    def hold(self, name: str) -> AbstractAsyncContextManager[None]:
        """Keep ``name`` from idle eviction for the block without loading it."""
        return self._units[name].hold()

    def touch(self, name: str) -> None:
        """Count as use now (a live dictation's accepted audio frame)."""
        self._units[name].usage.touch()

    async def run(self, name: str, fn: Callable[[Any], Any], priority: Priority, **lease: bool) -> Any:
        """Run ``fn(model)`` on the unit's thread under a lease."""
        return await self._units[name].run(fn, priority, **lease)

    def unit(self, name: str) -> ModelUnit:
        """The unit itself, for batched work (:meth:`ModelUnit.run_batched`)."""
        return self._units[name]

    # -- residency policy ------------------------------------------------

    async def _make_room(self, wanted: ModelUnit) -> None:
        """One-resident mode: evict every other unit, waiting briefly for leases."""
        deadline = self.clock() + BUSY_WAIT_SEC
        for other in self._units.values():
            if other is wanted:
                continue
            if not await other.usage.wait_unleased(deadline):
                raise ModelBusy(
                    f"{other.name} is in use and only one model may be resident "
                    "(POLYASR_COLOAD=0); retry shortly"
                )
            await other.evict()

    async def evict_idle(self) -> list[str]:
        """Evict units unused for longer than the idle window (never leased ones)."""
        if self.idle_seconds <= 0:
            return []
        evicted = []
        for unit in self._units.values():
            if unit.model is not None and unit.usage.idle_expired(self.idle_seconds) and await unit.evict():
                evicted.append(unit.name)
        return sorted(evicted)

    async def unload_all(self) -> list[str]:
        """Evict every resident unit now (§4.2). Queued and running work finishes
        on the model it was queued for; work that arrives meanwhile reloads."""
        evicted = [unit.name for unit in self._units.values() if await unit.evict()]
        return sorted(evicted)

    async def reload(self, name: str) -> bool:
        """Reload a resident, unleased unit in place (self-heal)."""
        unit = self._units[name]
        if unit.model is None or unit.usage.leases > 0:
            return False
        await unit.evict()
        try:
            async with unit.lease(use=False):
                pass
        except (ModelUnavailable, ModelBusy):
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

    def cannot_load(self, name: str) -> str | None:
        """Why loading ``name`` is bound to fail (its pre-load check: the
        weights, the hub), or None. Blocking: call it from a thread."""
        return self._units[name].preflight()

    def is_busy(self, name: str) -> bool:
        """In real use right now (a health probe does not count)."""
        return self._units[name].usage.uses > 0

    def queue_depth(self, name: str) -> int:
        return self._units[name].worker.depth()

    def idle_for(self, name: str) -> float | None:
        return self._units[name].idle_for()

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
            "unit_state": {name: unit.state() for name, unit in self._units.items()},
        }
