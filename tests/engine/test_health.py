"""Health honesty on the real engine: derived status, the
streaming probe, staleness, self-heal, weights re-checks, idle eviction wins."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from polyasr.core.engine import Transcript
from polyasr.core.weights import check_weights
from polyasr.models.health import HealthMonitor, SessionOutcome
from polyasr.models.manager import AsrModelManager
from polyasr.models.transcriber import Transcriber, TranscribeRequest
from tests.audio_util import speech


class RottedEngine:
    """The real engine whose decodes come back blank, as a rotted model's do."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.blank = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def transcribe(self, model: Any, clips: list[Any], should_stop: Any = None) -> list[Transcript]:
        real = self._engine.transcribe(model, clips, should_stop)
        return [Transcript("", r.language) for r in real] if self.blank else real


async def stack(
    settings: Any, engine: Any, **monitor: Any
) -> tuple[AsrModelManager, HealthMonitor, Transcriber]:
    mgr = AsrModelManager(engine, coload=True, idle_seconds=settings.idle_evict_seconds, load_timeout=60)
    tx = Transcriber(engine, mgr, settings)
    mon = HealthMonitor(settings, mgr, tx, engine.model_id, speech("voice_a")[: 16000 * 3], **monitor)
    async with mgr.lease("asr"):
        pass
    return mgr, mon, tx


async def test_probe_ok_then_stale_then_refreshed_by_real_text(make_settings: Any, make_engine: Any) -> None:
    settings = make_settings(POLYASR_PROBE_STALE_AFTER_SEC="0.5", POLYASR_KEEPWARM_INTERVAL_SEC="0")
    mgr, mon, tx = await stack(settings, make_engine(settings))
    await mon.start()
    assert mon.probe.ok is True and mon.reasons() == []
    await asyncio.sleep(0.7)
    assert mon.reasons() == ["streaming_probe_stale"]
    result = await tx.transcribe(speech()[:32000], TranscribeRequest(language="English"))
    assert result.text
    assert mon.reasons() == []
    await mon.close()
    await mgr.close()


async def test_evicted_model_is_never_stale_and_never_reloaded_by_the_probe(
    make_settings: Any, make_engine: Any
) -> None:
    settings = make_settings(POLYASR_PROBE_STALE_AFTER_SEC="0.2", POLYASR_KEEPWARM_INTERVAL_SEC="0")
    mgr, mon, _tx = await stack(settings, make_engine(settings))
    await mon.start()
    await mgr.unload_all()
    await asyncio.sleep(0.3)
    assert mon.reasons() == []  # evicted with weights present: ok
    runs = mon.probe.runs
    await mon.run_probe()
    assert mon.probe.runs == runs and not mgr.is_resident("asr")
    await mon.close()
    await mgr.close()


async def test_keepwarm_probe_does_not_count_as_use(make_settings: Any, make_engine: Any) -> None:
    settings = make_settings(POLYASR_KEEPWARM_INTERVAL_SEC="0.2", POLYASR_IDLE_EVICT_SECONDS="100")
    mgr, mon, _tx = await stack(settings, make_engine(settings))
    await mon.start()
    idle_before = mgr.idle_for("asr")
    await asyncio.sleep(2.0)
    for _ in range(600):  # on a loaded machine each probe decode may take a while
        if mon.probe.runs >= 3:
            break
        await asyncio.sleep(0.1)
    assert mon.probe.runs >= 3  # the loop ran in the idle gap
    while mgr.is_busy("asr"):  # a probe in flight holds a lease (idle_for reads 0.0)
        await asyncio.sleep(0.01)
    idle_after = mgr.idle_for("asr")
    assert idle_before is not None and idle_after is not None and idle_after >= idle_before + 1.0
    await mon.close()
    await mgr.close()


async def test_blank_probes_degrade_reload_and_exit(make_settings: Any, make_engine: Any) -> None:
    settings = make_settings(POLYASR_KEEPWARM_INTERVAL_SEC="0")
    engine = RottedEngine(make_engine(settings))
    exits: list[int] = []
    mgr, mon, _tx = await stack(settings, engine, exit_process=exits.append)
    await mon.start()  # failure 1
    await mon.run_probe()  # 2: hysteresis, still ok
    assert mon.reasons() == [] or mon.reasons() == ["streaming_probe_stale"]
    assert "streaming_probe_failing" not in mon.reasons()
    await mon.run_probe()  # 3: degraded, and the asr unit is reloaded in place
    assert "streaming_probe_failing" in mon.reasons()
    assert mon.probe.reloads == 1 and mgr.status()["unit_state"]["asr"]["loads"] == 2
    for _ in range(3):
        await mon.run_probe()
    assert exits == [3]
    engine.blank = False
    await mon.run_probe()
    assert mon.reasons() == [] and mon.probe.consecutive_failures == 0
    await mon.close()
    await mgr.close()


async def test_weights_recheck_on_a_timer(
    make_settings: Any, make_engine: Any, tiny: Any, tmp_path: Path
) -> None:
    model_dir = tmp_path / "asr-copy"
    shutil.copytree(tiny.asr, model_dir)
    settings = make_settings(POLYASR_MODEL=str(model_dir), POLYASR_WEIGHTS_CHECK_INTERVAL_SEC="0.2")
    mgr, mon, _tx = await stack(settings, make_engine(settings))
    await mon.start()
    assert mon.weights_present
    shutil.rmtree(model_dir)
    await asyncio.sleep(0.6)
    assert mon.reasons()[0] == "weights_missing"  # noticed without any traffic
    await mon.close()
    await mgr.close()


def test_check_weights_resolves_offline(tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert check_weights(str(tiny.asr))[0] is True
    assert check_weights(str(tmp_path / "missing"))[0] is False
    present, detail = check_weights("Qwen/Qwen3-ASR-0.6B")
    assert present is False and "cache" in detail


async def settle(mon: HealthMonitor) -> None:
    """Let a requested live reload find its idle gap (or give up)."""
    for _ in range(1200):  # a reload on a loaded machine may take a while
        if not mon.live.reload_requested:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the live reload never ran")


async def test_live_rot_witnesses_reload_asr_at_the_next_idle_gap(
    make_settings: Any, make_engine: Any
) -> None:
    settings = make_settings(
        POLYASR_PARTIALS_ENABLED="1", POLYASR_LIVE_RELOAD_WITNESSES="2", POLYASR_KEEPWARM_INTERVAL_SEC="0"
    )
    engine = RottedEngine(make_engine(settings))  # the probe confirms: no text comes out
    mgr, mon, _ = await stack(settings, engine)
    assert mon.probe_block([])["live"] == {
        "enabled": True,
        "witnesses": 0,
        "reload_requested": False,
        "reloads": 0,
        "not_confirmed": 0,
    }
    mon.record_session(SessionOutcome(5.0, "hello there", 0, 2, 5.0))  # witness 1
    mon.record_session(SessionOutcome(1.0, "short", 0, 2, 5.0))  # too little speech: inconclusive
    mon.record_session(SessionOutcome(5.0, "   ", 0, 2, 5.0))  # no final text: inconclusive
    mon.record_session(SessionOutcome(5.0, "fast", 0, 2, 0.4))  # sent faster than partials come
    mon.record_session(SessionOutcome(5.0, "busy", 0, 0, 5.0))  # no partial decode ever finished
    assert mon.live.witnesses == 1
    mon.record_session(SessionOutcome(5.0, "hello", 2, 2, 5.0))  # partials flowed: the model is fine
    assert mon.live.witnesses == 0
    async with mgr.hold("asr"):  # a live dictation: never reloaded mid-session
        mon.record_session(SessionOutcome(3.0, "one", 0, 2, 3.0))
        mon.record_session(SessionOutcome(3.0, "two", 0, 2, 3.0))
        assert mon.probe_block([])["live"]["reload_requested"] is True
        await asyncio.sleep(1.2)
        assert mon.live.reloads == 0 and mgr.status()["unit_state"]["asr"]["loads"] == 1
    await settle(mon)  # the session ended: the idle gap
    assert mon.live.reloads == 1 and mon.live.witnesses == 0
    assert mgr.status()["unit_state"]["asr"]["loads"] == 2 and mgr.is_resident("asr")
    # at most one live reload per LIVE_RELOAD_INTERVAL_SEC (600 s by default)
    mon.record_session(SessionOutcome(3.0, "three", 0, 2, 3.0))
    mon.record_session(SessionOutcome(3.0, "four", 0, 2, 3.0))
    await settle(mon)
    assert mon.live.reloads == 1 and mgr.status()["unit_state"]["asr"]["loads"] == 2
    await mon.close()
    await mgr.close()


async def test_a_model_the_probe_hears_is_not_reloaded(make_settings: Any, make_engine: Any) -> None:
    """Witnesses are only evidence: a model that still writes the probe clip's text keeps running."""
    settings = make_settings(POLYASR_PARTIALS_ENABLED="1", POLYASR_LIVE_RELOAD_WITNESSES="2")
    mgr, mon, _ = await stack(settings, make_engine(settings))
    mon.record_session(SessionOutcome(3.0, "one", 0, 2, 3.0))
    mon.record_session(SessionOutcome(3.0, "two", 0, 2, 3.0))
    await settle(mon)
    assert (mon.live.reloads, mon.live.not_confirmed, mon.live.witnesses) == (0, 1, 0)
    assert mgr.status()["unit_state"]["asr"]["loads"] == 1
    await mon.close()
    await mgr.close()


async def test_live_rot_request_is_satisfied_by_an_eviction(make_settings: Any, make_engine: Any) -> None:
    settings = make_settings(POLYASR_PARTIALS_ENABLED="1", POLYASR_LIVE_RELOAD_WITNESSES="1")
    mgr, mon, _ = await stack(settings, make_engine(settings))
    async with mgr.hold("asr"):
        mon.record_session(SessionOutcome(3.0, "one", 0, 2, 3.0))
        assert mon.live.reload_requested
        await mgr.unload_all()
    await settle(mon)
    assert mon.live.reloads == 0 and not mgr.is_resident("asr")  # evicted meanwhile: nothing to reload
    await mon.close()
    await mgr.close()


@pytest.mark.parametrize("env", [{"POLYASR_PARTIALS_ENABLED": "0"}, {"POLYASR_LIVE_ROT_DETECT": "0"}])
async def test_live_rot_is_off_without_partials_or_when_disabled(
    make_settings: Any, make_engine: Any, env: dict[str, str]
) -> None:
    settings = make_settings(**{"POLYASR_PARTIALS_ENABLED": "1", "POLYASR_LIVE_RELOAD_WITNESSES": "1", **env})
    mgr, mon, _ = await stack(settings, make_engine(settings))
    for _ in range(3):
        mon.record_session(SessionOutcome(5.0, "a final", 0, 2, 5.0))
    assert mon.probe_block([])["live"] == {
        "enabled": False,
        "witnesses": 0,
        "reload_requested": False,
        "reloads": 0,
        "not_confirmed": 0,
    }
    assert mgr.status()["unit_state"]["asr"]["loads"] == 1
    await mon.close()
    await mgr.close()
