"""The service objects every route uses, built once per app in its lifespan.

:class:`Services` holds them typed; routes reach it through the one
dependency :data:`ServicesDep` (HTTP and WebSocket routes alike), so a route
names what it uses and a test reaches the same objects through
``app.state.services``. Building is split into small functions, one per
family of objects, so that a change to one family (the archives, the
dictation services) is a change to one function.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from polyasr.align.dictation import DictationAligner
from polyasr.align.pipeline import Aligner
from polyasr.api.metrics import Metrics
from polyasr.archive.archives import Archives
from polyasr.audio.budget import AudioBudget
from polyasr.audio.decoding import AudioDecodeError, decode_audio
from polyasr.audio.speech import SpeakerGate, shared_vad
from polyasr.audio.voice import shared_voice_encoder
from polyasr.core.config import Settings, settings_view
from polyasr.core.engine import Engine
from polyasr.core.threads import BATCH, default_batch_threads
from polyasr.diarize.transcript import DiarizedTranscriber
from polyasr.dictation.recognizer import DictationSettings
from polyasr.live.basr.services import LiveServices
from polyasr.live.basr.sessions import SessionRegistry
from polyasr.live.basr.wire import WsLimits
from polyasr.models.health import HealthMonitor
from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.transcriber import DictationDecoder, Transcriber
from polyasr.models.unit import ModelUnavailable

log = logging.getLogger("polyasr")

PROBE_CLIP = Path(__file__).resolve().parents[2] / "assets" / "probe_speech_16k.wav"  # assets/ at the top


@dataclass
class Services:
    """Everything the routes call, for one app."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    manager: AsrModelManager
    health: HealthMonitor
    transcriber: Transcriber
    aligner: Aligner
    diarizer: DiarizedTranscriber
    archives: Archives
    live: LiveServices
    probe_clip: Any
    audio_budget: AudioBudget
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)

    async def start(self) -> None:
        """Load VAD and the speaker encoder (cheap to fail on, unlike a model),
        preload the asr unit (a failure only degrades), then start the probe,
        the idle sweep, the session pruner and the archives (recovery, retention)."""
        await asyncio.to_thread(shared_vad)
        speaker = await asyncio.to_thread(shared_voice_encoder)
        if self.probe_clip is not None:
            # The first embedding pays one-off costs (JIT-compiled resampling in
            # Resemblyzer's preprocessing): pay them now, not in a user's first stop.
            await asyncio.to_thread(speaker.embed, self.probe_clip)
        try:
            async with self.manager.lease("asr"):
                pass
        except ModelUnavailable:
            # The unit logged why as the one error line; /health says degraded.
            log.info("serving degraded: the asr unit did not load")
        except ModelBusy as exc:
            log.error("preloading asr failed; serving degraded: %s", exc)
        await self.health.start()
        self.manager.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.live.registry.prune_forever()))
        await self.archives.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.archives.close()
        await self.health.close()
        await self.manager.close()


def get_services(connection: HTTPConnection) -> Services:
    """The app's services (one dependency for HTTP and WebSocket routes)."""
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def build_archives(settings: Settings, engine: Engine, base_dir: Path) -> Archives:
    return Archives(settings.log_root(base_dir), engine.backend, engine.model_id, settings)


def dictation_settings(settings: Settings, engine: Engine) -> DictationSettings:
    """Dictation knobs; native streaming only where the engine can do it."""
    if settings.native_streaming and not engine.supports_native_streaming:
        log.warning("POLYASR_NATIVE_STREAMING is set but this engine cannot stream natively; ignored")
    native = settings.native_streaming and engine.supports_native_streaming
    return settings_view(DictationSettings, settings, native=native)


def build_live_services(
    settings: Settings,
    engine: Engine,
    transcriber: Transcriber,
    archives: Archives,
    health: HealthMonitor,
) -> LiveServices:
    """What live connections need. The VAD and the speaker encoder are
    process-wide and load once, when :meth:`Services.start` first asks."""
    return LiveServices(
        registry=SessionRegistry.from_settings(settings, archives.root, archives.status),
        decoder=DictationDecoder(transcriber),
        manager=transcriber.manager,
        settings=dictation_settings(settings, engine),
        new_vad=lambda: shared_vad().new_stream(),
        new_speaker=lambda: SpeakerGate(shared_voice_encoder()),
        new_log=archives.new_connection,
        aligner=DictationAligner(engine, transcriber.manager),
        limits=WsLimits.from_settings(settings),
        on_session_end=health.record_session,
    )


def load_probe_clip() -> Any:
    """The project's own speech clip for the streaming probe, if it is there."""
    try:
        return decode_audio(str(PROBE_CLIP))
    except (AudioDecodeError, FileNotFoundError):
        log.warning("probe clip %s unreadable; streaming probe disabled", PROBE_CLIP)
        return None


def build_services(engine: Engine, settings: Settings, base_dir: Path) -> Services:
    """Every service object of one app, built in dependency order (nothing started yet).

    Observers subscribe themselves as they are built: the metrics and the
    health monitor to the model units, the health monitor to the texts the
    transcriber produces.
    """
    BATCH.resize(settings.batch_threads or default_batch_threads())
    manager = AsrModelManager(
        engine,
        coload=settings.coload,
        idle_seconds=settings.idle_evict_seconds,
        load_timeout=settings.load_timeout_sec,
        decode_timeout=settings.decode_timeout_sec,
        max_queued=settings.max_queued_decodes,
        batch_window=settings.batch_window_ms / 1000,
    )
    archives = build_archives(settings, engine, base_dir)
    metrics = Metrics(
        queue_depth=manager.queue_depth,
        engine_memory=engine.memory_mib,
        engine_counters=engine.counters,
        archive_writes=archives.status.counts,
    )
    manager.observers.subscribe(metrics)
    transcriber = Transcriber(engine, manager, settings)
    transcriber.loop_listeners.append(metrics.loop_cut)
    probe_clip = load_probe_clip()
    health = HealthMonitor(settings, manager, transcriber, engine.model_id, probe_clip)
    aligner = Aligner(engine, manager, transcriber)
    return Services(
        settings=settings,
        engine=engine,
        metrics=metrics,
        manager=manager,
        health=health,
        transcriber=transcriber,
        aligner=aligner,
        diarizer=DiarizedTranscriber(transcriber, aligner),
        archives=archives,
        live=build_live_services(settings, engine, transcriber, archives, health),
        probe_clip=probe_clip,
        audio_budget=AudioBudget(settings.decoded_audio_bytes, settings.decode_wait_sec),
    )
