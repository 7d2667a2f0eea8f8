"""Model manager on the real engine with tiny checkpoints: residency, leases,
per-unit idle clocks, one-resident mode, unload, load failures and timeouts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.scheduler import Priority
from polyasr.models.unit import ModelUnavailable, UnitObserver


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(make_settings: Any, make_engine: Any) -> Any:
    return make_engine(make_settings())


def manager_for(engine: Any, **kwargs: Any) -> AsrModelManager:
    options: dict[str, Any] = {"coload": True, "idle_seconds": 60.0, "load_timeout": 120.0}
    options.update(kwargs)
    return AsrModelManager(engine, **options)


async def test_lazy_load_and_coload(engine: Any) -> None:
    mgr = manager_for(engine)
    assert mgr.status()["resident"] == []
    async with mgr.lease("asr"):
        assert mgr.is_resident("asr")
    async with mgr.lease("align"):
        pass
    status = mgr.status()
    assert status["resident"] == ["align", "asr"] and status["coload"] is True
    assert status["units"] == ["asr", "align"]
    assert status["unit_state"]["asr"]["loads"] == 1
    assert await mgr.unload_all() == ["align", "asr"]
    assert mgr.status()["resident"] == [] and mgr.status()["idle_for"] is None
    await mgr.close()


async def test_one_resident_mode_evicts_the_other(engine: Any) -> None:
    mgr = manager_for(engine, coload=False)
    async with mgr.lease("asr"):
        pass
    async with mgr.lease("align"):
        assert mgr.status()["resident"] == ["align"]
    async with mgr.lease("asr"):
        assert mgr.status()["resident"] == ["asr"]
    assert mgr.status()["unit_state"]["align"]["evictions"] == 1
    await mgr.close()


async def test_one_resident_mode_never_evicts_a_leased_unit(engine: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("polyasr.models.manager.BUSY_WAIT_SEC", 0.3)
    mgr = manager_for(engine, coload=False)
    async with mgr.lease("asr"):
        with pytest.raises(ModelBusy):
            async with mgr.lease("align"):
                pass
        assert mgr.is_resident("asr")
    await mgr.close()


async def test_idle_eviction_uses_a_clock_per_unit(engine: Any) -> None:
    clock = FakeClock()
    mgr = manager_for(engine, idle_seconds=30.0, clock=clock)
    async with mgr.lease("asr"):
        pass
    async with mgr.lease("align"):
        pass
    clock.now += 20
    async with mgr.lease("asr"):  # asr is used again; align is not
        pass
    clock.now += 15
    assert await mgr.evict_idle() == ["align"]
    assert mgr.status()["resident"] == ["asr"]
    clock.now += 31
    assert await mgr.evict_idle() == ["asr"]
    await mgr.close()


async def test_a_leased_unit_is_never_evicted(engine: Any) -> None:
    clock = FakeClock()
    mgr = manager_for(engine, idle_seconds=5.0, clock=clock)
    async with mgr.lease("asr"):
        clock.now += 600
        assert await mgr.evict_idle() == []
        assert mgr.idle_for("asr") == 0.0
    # The idle clock starts when the last lease ends.
    clock.now += 4
    assert await mgr.evict_idle() == []
    clock.now += 2
    assert await mgr.evict_idle() == ["asr"]
    await mgr.close()


async def test_touch_keeps_a_unit_alive(engine: Any) -> None:
    clock = FakeClock()
    mgr = manager_for(engine, idle_seconds=10.0, clock=clock)
    async with mgr.lease("asr"):
        pass
    for _ in range(5):
        clock.now += 8
        mgr.touch("asr")
        assert await mgr.evict_idle() == []
    await mgr.close()


async def test_background_sweep_evicts(engine: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("polyasr.models.manager.SWEEP_INTERVAL_SEC", 0.1)
    mgr = manager_for(engine, idle_seconds=0.3)
    mgr.start()
    async with mgr.lease("asr"):
        pass
    for _ in range(50):
        await asyncio.sleep(0.1)
        if not mgr.is_resident("asr"):
            break
    assert not mgr.is_resident("asr")
    await mgr.close()


async def test_idle_eviction_disabled_with_zero(engine: Any) -> None:
    clock = FakeClock()
    mgr = manager_for(engine, idle_seconds=0.0, clock=clock)
    async with mgr.lease("asr"):
        pass
    clock.now += 10**6
    assert await mgr.evict_idle() == []
    await mgr.close()


async def test_failed_load_is_reported_and_retried(
    make_settings: Any, make_engine: Any, tmp_path: Any
) -> None:
    engine = make_engine(make_settings(POLYASR_MODEL=str(tmp_path / "nowhere")))
    failures: list[str] = []

    class Failures(UnitObserver):
        def load_failed(self, unit: str, reason: str) -> None:
            failures.append(unit)

    mgr = manager_for(engine)
    mgr.observers.subscribe(Failures())
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="asr model unavailable"):
            async with mgr.lease("asr"):
                pass
    assert failures == ["asr", "asr"]
    assert mgr.status()["unit_state"]["asr"]["last_error"]
    await mgr.close()


async def test_load_timeout_never_hangs(engine: Any) -> None:
    release = threading.Event()
    real_load = engine.load

    def slow_load(unit: str) -> Any:
        release.wait(10)
        return real_load(unit)

    engine.load = slow_load
    mgr = manager_for(engine, load_timeout=0.3)
    with pytest.raises(ModelUnavailable, match="did not finish"):
        async with mgr.lease("asr"):
            pass
    # While the stuck load runs, further requests fail fast instead of hanging.
    with pytest.raises(ModelUnavailable, match="earlier load"):
        async with mgr.lease("asr"):
            pass
    release.set()
    for _ in range(300):  # the late load finishes and is adopted, not repeated
        await asyncio.sleep(0.1)
        try:
            async with mgr.lease("asr"):
                break
        except ModelUnavailable:
            continue
    assert mgr.is_resident("asr") and mgr.status()["unit_state"]["asr"]["loads"] == 1
    await mgr.close()


async def test_run_batched_decodes_on_the_unit(engine: Any) -> None:
    from polyasr.core.engine import Clip
    from tests.audio_util import speech

    mgr = manager_for(engine)
    clip = Clip(speech()[:32000], "English", "", 32)
    results = await asyncio.gather(
        *(mgr.unit("asr").run_batched("tx", engine.transcribe, clip, Priority.BATCH) for _ in range(3))
    )
    assert len(results) == 3 and all(r.language == "English" for r in results)
    await mgr.close()


async def test_a_final_preempts_a_running_partial(engine: Any, backend: str) -> None:
    """On CUDA (transformers) a partial yields between tokens once a final waits;
    mlx-qwen3-asr has no hook between tokens, so there it runs to its budget."""
    import numpy as np

    from polyasr.core.engine import Clip, Preempted
    from tests.audio_util import speech

    mgr = manager_for(engine)
    audio = np.tile(speech(), 3)[: 16000 * 20]
    async with mgr.lease("asr"):
        pass
    long_partial = asyncio.ensure_future(
        mgr.unit("asr").run_batched(
            "tx", engine.transcribe, Clip(audio, "English", "", 256), Priority.PARTIAL
        )
    )
    await asyncio.sleep(0.3)  # the partial is generating now
    final = await mgr.unit("asr").run_batched(
        "tx", engine.transcribe, Clip(audio[:32000], "English", "", 32), Priority.FINAL
    )
    assert final.language == "English"
    if backend == "cuda":
        with pytest.raises(Preempted):
            await long_partial
    else:
        assert (await long_partial).language == "English"
    await mgr.close()
