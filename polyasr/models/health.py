"""Honest health: ``status`` is derived from evidence.

Four kinds of reason make ``/health`` say ``degraded``: the ASR weights no
longer resolve from local storage (checked on its own timer, at start-up and
after any failed load, whether or not the model is resident); a model unit
that cannot load (its weights are not there and cannot be fetched, or its
last load failed), so the requests that need it answer 503; the streaming probe —
the project's own speech clip decoded through the live ``asr`` unit — came
back empty several times in a row; or there is no recent evidence at all that
the resident model produces text. The probe runs only in idle gaps, never
counts as use (idle eviction wins) and never reloads an evicted unit.

Live rot detection watches real dictation instead: a model that has rotted
still answers finals but stops producing partials, so sessions with speech, a
final and no partial are witnesses, and enough of them in a row reload the
``asr`` unit at the next idle gap. That evidence means something only when
partials are on: with ``POLYASR_PARTIALS_ENABLED=0`` (the MLX default) every
session has zero partials, so the detector stays off rather than reloading
after every second dictation. Nor is a session a witness that was sent
faster than it could earn a partial (``polyasr dictate --pace 0``: seconds of
speech in a fraction of a second): a witness must have run, in wall-clock
time, at least ``LIVE_MIN_SPEECH_SEC`` and three partial intervals. Before
reloading, the probe clip is decoded: a model that still writes its text is
not reloaded. And live reloads are at most one per ``LIVE_RELOAD_INTERVAL_SEC``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyasr.core.config import Settings
from polyasr.core.engine import UNITS, Preempted
from polyasr.core.weights import check_weights
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import DecodeTimeout
from polyasr.models.transcriber import Transcriber, TranscribeRequest
from polyasr.models.unit import ModelUnavailable, NotResident, UnitObserver

log = logging.getLogger("polyasr.health")


@dataclass
class ProbeState:
    consecutive_failures: int = 0
    ok: bool | None = None
    last_ok: float | None = None  # monotonic time of the last good evidence
    last_text: str = ""
    reloads: int = 0
    runs: int = 0


@dataclass(frozen=True)
class SessionOutcome:
    """What one answered dictation says about the model."""

    signal_sec: float  # speech that went in
    final_text: str
    partials: int  # partials sent
    partial_decodes: int = 0  # partial decodes that finished while the session was open
    wall_sec: float = 0.0  # from the first audio to the stop


@dataclass
class LiveState:
    witnesses: int = 0  # consecutive sessions with speech, a final and no partial
    reload_requested: bool = False
    reloads: int = 0
    not_confirmed: int = 0  # requests the probe overruled: the model still wrote text
    reloaded_at: float | None = None  # monotonic time of the last live reload


# How often a requested live reload looks for an idle gap.
LIVE_IDLE_POLL_SEC = 0.5
# A weights or hub check that takes longer (a wedged volume) counts as failed.
CHECK_TIMEOUT_SEC = 30.0


class UnitReadiness:
    """Whether each model unit can serve a request that needs it.

    A resident unit is ready. One that is not must be loadable: its weights
    are here or can be fetched (the unit's own pre-load check, re-run with the
    weights check), and its last load, if any, did not fail. Without this a
    server whose aligner cannot load says ``ok`` while every subtitle, word
    timestamp and alignment answers 503.
    """

    def __init__(self, manager: AsrModelManager) -> None:
        self.manager = manager
        self.blockers: dict[str, str | None] = dict.fromkeys(UNITS)

    async def check(self) -> None:
        """Re-run each unit's pre-load check, bounded in time."""

        async def one(name: str) -> str | None:
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(self.manager.cannot_load, name), CHECK_TIMEOUT_SEC
                )
            except TimeoutError:
                return f"weights check timed out after {CHECK_TIMEOUT_SEC:g} s"

        verdicts = await asyncio.gather(*(one(name) for name in UNITS))
        self.blockers = dict(zip(UNITS, verdicts, strict=True))

    def why_not(self, name: str) -> str | None:
        """Why ``name`` cannot serve now, or None when it can."""
        if self.manager.is_resident(name):
            return None
        return self.blockers[name] or self.manager.unit(name).last_error

    def reasons(self) -> list[str]:
        return [f"{name}_unavailable" for name in UNITS if self.why_not(name) is not None]

    def report(self) -> dict[str, dict[str, Any]]:
        """``/health``'s ``units`` block: ``{unit: {"ready", "detail"}}``."""
        return {name: {"ready": (why := self.why_not(name)) is None, "detail": why} for name in UNITS}


async def _probe_text(transcriber: Transcriber, clip: np.ndarray | None) -> str | None:
    """The probe clip's text, to confirm live rot before a reload (``""``: none,
    the model looks rotted; without a probe clip the witnesses decide alone);
    ``None`` when it could not run now."""
    if clip is None:
        return ""
    try:
        result = await transcriber.transcribe(clip, TranscribeRequest(language="English", probe=True))
    except (NotResident, Preempted):
        return None
    except (ModelUnavailable, DecodeTimeout):
        return ""
    return result.text.strip()


class HealthMonitor(UnitObserver):
    """Weights checks, the streaming probe, and the derived ``status``."""

    def __init__(
        self,
        settings: Settings,
        manager: AsrModelManager,
        transcriber: Transcriber,
        model_id: str,
        probe_clip: np.ndarray | None,
        exit_process: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.transcriber = transcriber
        self.model_id = model_id
        self.probe_clip = probe_clip
        self.exit_process = exit_process
        self.clock = clock
        self.weights_present = True
        self.weights_detail = ""
        self._weights_checked = False
        self.readiness = UnitReadiness(manager)
        self.probe = ProbeState()
        self.live = LiveState()
        self._tasks: list[asyncio.Task[None]] = []
        manager.observers.subscribe(self)  # load failures
        transcriber.listeners.append(self.record_text)

    @property
    def probe_enabled(self) -> bool:
        return self.settings.streaming_probe and self.probe_clip is not None

    @property
    def live_enabled(self) -> bool:
        """Zero partials is evidence only where partials are produced at all."""
        return self.settings.live_rot_detect and self.settings.partials_enabled

    # -- evidence ----------------------------------------------------------

    def record_text(self, text: str) -> None:
        """Real traffic that produced text is good evidence (a busy server is not stale)."""
        if text.strip():
            self.probe.last_ok = self.clock()

    def record_session(self, outcome: SessionOutcome) -> None:
        """A dictation stop was answered.

        A session with a partial resets the count. A witness has at least
        ``LIVE_MIN_SPEECH_SEC`` of speech that took at least that long and
        three partial intervals to arrive, a non-empty final, and partial
        decodes that finished but sent no partial; any other session is
        inconclusive (sent faster than partials come, or with every partial
        decode still queued behind other work: a busy model, not a rotted
        one). ``LIVE_RELOAD_WITNESSES`` in a row request a reload, run (once
        the probe confirms) at the next idle gap.
        """
        if not self.live_enabled:
            return
        live = self.live
        if outcome.partials > 0:
            live.witnesses = 0
            return
        earned = max(self.settings.live_min_speech_sec, 3 * self.settings.partial_interval_sec)
        if outcome.signal_sec < self.settings.live_min_speech_sec or not outcome.final_text.strip():
            return
        if outcome.wall_sec < earned or outcome.partial_decodes == 0:
            return  # no partial could have come: no evidence either way
        signal_sec = outcome.signal_sec
        live.witnesses += 1
        log.warning(
            "live rot witness: %.1f s of speech, a final and no partial (%d)", signal_sec, live.witnesses
        )
        if live.witnesses >= self.settings.live_reload_witnesses and not live.reload_requested:
            live.reload_requested = True
            self._tasks = [task for task in self._tasks if not task.done()]
            self._tasks.append(asyncio.get_running_loop().create_task(self._live_reload()))

    async def _live_reload(self) -> None:
        """Reload ``asr`` once nothing uses it (never mid-session) and the probe
        confirms it writes no text; an eviction in the meantime satisfies the
        request (the next load is fresh anyway)."""
        live = self.live
        interval = self.settings.live_reload_interval_sec
        try:
            if live.reloaded_at is not None and self.clock() - live.reloaded_at < interval:
                log.warning(
                    "live rot: not reloading again within %g s (POLYASR_LIVE_RELOAD_INTERVAL_SEC)", interval
                )
                return
            while self.manager.is_resident("asr"):
                if not self.manager.is_busy("asr"):
                    text = await _probe_text(self.transcriber, self.probe_clip)
                    if text:
                        live.not_confirmed += 1
                        log.warning(
                            "live rot not confirmed: the probe decoded %r; asr is not reloaded", text[:40]
                        )
                        return
                    if text is not None and await self.manager.reload("asr"):
                        live.reloads += 1
                        live.reloaded_at = self.clock()
                        log.warning("live rot: asr reloaded after %d witness sessions", live.witnesses)
                        return
                await asyncio.sleep(LIVE_IDLE_POLL_SEC)
        finally:
            live.reload_requested = False
            live.witnesses = 0

    async def check_weights_now(self) -> None:
        """Re-resolve the weights and whether each unit can load, bounded in
        time (a wedged volume must not hang). A change is logged; the verdict
        at start-up is not, as a missing model's failed preload said it already."""
        try:
            present, detail = await asyncio.wait_for(
                asyncio.to_thread(check_weights, self.model_id), CHECK_TIMEOUT_SEC
            )
        except TimeoutError:
            present, detail = False, f"weights check timed out after {CHECK_TIMEOUT_SEC:g} s"
        if self._weights_checked and present != self.weights_present:
            log.warning("weights for %s present=%s (%s)", self.model_id, present, detail)
        self.weights_present, self.weights_detail = present, detail
        self._weights_checked = True
        await self.readiness.check()

    def load_failed(self, unit: str, reason: str) -> None:
        """A real load failed: re-check the weights and the units right away."""
        asyncio.get_running_loop().create_task(self.check_weights_now())

    async def run_probe(self) -> None:
        """Decode the probe clip through the live asr unit, if it is resident."""
        assert self.probe_clip is not None
        try:
            # The clip is English speech; pinning that keeps the probe about
            # "does the model produce text", not about language detection.
            result = await self.transcriber.transcribe(
                self.probe_clip, TranscribeRequest(language="English", probe=True)
            )
        except (NotResident, Preempted):
            return  # evicted (never reload to probe), or real work needed the device
        except (ModelUnavailable, DecodeTimeout) as exc:
            log.warning("streaming probe: %s", exc)
            text = ""
        else:
            text = result.text.strip()
        state = self.probe
        state.runs += 1
        if text:
            state.ok, state.consecutive_failures = True, 0
            state.last_ok, state.last_text = self.clock(), text[:80]
            return
        state.ok = False
        state.consecutive_failures += 1
        log.warning("streaming probe returned no text (%d in a row)", state.consecutive_failures)
        await self._self_heal()

    async def _self_heal(self) -> None:
        failures = self.probe.consecutive_failures
        reload_at = self.settings.probe_fail_reload
        if reload_at and failures == reload_at and await self.manager.reload("asr"):
            self.probe.reloads += 1
        if (
            self.settings.probe_fail_exit
            and failures >= self.settings.probe_fail_exit
            and self.weights_present
        ):
            log.critical("streaming probe failed %d times; exiting for the supervisor", failures)
            self.exit_process(3)

    # -- loops -------------------------------------------------------------

    async def start(self) -> None:
        """Check weights and probe once now, then keep doing so on timers."""
        await self.check_weights_now()
        loop = asyncio.get_running_loop()
        if self.settings.weights_check_interval_sec > 0:
            self._tasks.append(loop.create_task(self._weights_loop()))
        if self.probe_enabled:
            await self.run_probe()
            if self.settings.keepwarm_interval_sec > 0:
                self._tasks.append(loop.create_task(self._keepwarm_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def _weights_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.weights_check_interval_sec)
            await self.check_weights_now()

    async def _keepwarm_loop(self) -> None:
        interval = self.settings.keepwarm_interval_sec
        while True:
            await asyncio.sleep(interval)
            idle = self.manager.idle_for("asr")
            # Only in idle gaps: a unit in use is already proving itself.
            if idle is None or idle < interval or self.manager.is_busy("asr"):
                continue
            try:
                await self.run_probe()
            except Exception:
                log.exception("streaming probe crashed")

    # -- report ------------------------------------------------------------

    def reasons(self) -> list[str]:
        reasons = []
        if not self.weights_present:
            reasons.append("weights_missing")
        reasons += self.readiness.reasons()
        if self.probe_enabled and self.manager.is_resident("asr"):
            threshold = self.settings.probe_fail_reload
            if threshold > 0 and self.probe.consecutive_failures >= threshold:
                reasons.append("streaming_probe_failing")
            window = self.settings.probe_stale_window_sec
            last_ok = self.probe.last_ok
            if window is not None and (last_ok is None or self.clock() - last_ok > window):
                reasons.append("streaming_probe_stale")
        return reasons

    def probe_block(self, reasons: list[str]) -> dict[str, Any]:
        state = self.probe
        age = None if state.last_ok is None else round(self.clock() - state.last_ok, 1)
        return {
            "enabled": self.probe_enabled,
            "healthy": not {"streaming_probe_failing", "streaming_probe_stale"} & set(reasons),
            "ok": state.ok,
            "consecutive_failures": state.consecutive_failures,
            "last_ok_age_sec": age,
            "reloads": state.reloads,
            "last_text": state.last_text,
            "live": {
                "enabled": self.live_enabled,
                "witnesses": self.live.witnesses,
                "reload_requested": self.live.reload_requested,
                "reloads": self.live.reloads,
                "not_confirmed": self.live.not_confirmed,
            },
        }
