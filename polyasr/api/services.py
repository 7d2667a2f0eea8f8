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

from polyasr.align.pipeline import Aligner
from polyasr.api.metrics import Metrics
from polyasr.archive.archives import Archives
from polyasr.audio.decoding import AudioDecodeError, decode_audio
from polyasr.audio.speech import SpeakerGate, shared_speaker_filter, shared_vad
from polyasr.core.config import Settings, settings_view
from polyasr.core.engine import Engine
from polyasr.dictation.recognizer import StreamSettings
from polyasr.live.basr.services import StreamServices
from polyasr.live.basr.sessions import SessionRegistry
from polyasr.live.basr.wire import WsLimits
from polyasr.models.health import HealthMonitor
from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.transcriber import StreamDecoder, Transcriber
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
    archives: Archives
    stream: StreamServices
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)

    async def start(self) -> None:
        """Preload the asr unit (a failure only degrades), start the probe,
        the idle sweep, the session pruner and the archives (recovery, retention)."""
        try:
            async with self.manager.lease("asr"):
                pass
        except (ModelUnavailable, ModelBusy) as exc:
            log.error("preloading asr failed; serving degraded: %s", exc)
        await self.health.start(self.transcriber.transcribe)
        self.manager.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.stream.registry.prune_forever()))
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


def stream_settings(settings: Settings, engine: Engine) -> StreamSettings:
    """Dictation knobs; native streaming only where the engine can do it."""
    if settings.native_streaming and not engine.supports_native_streaming:
        log.warning("POLYASR_NATIVE_STREAMING is set but this engine cannot stream natively; ignored")
    native = settings.native_streaming and engine.supports_native_streaming
    return settings_view(StreamSettings, settings, native=native)


async def build_stream_services(
    settings: Settings,
    engine: Engine,
    manager: AsrModelManager,
    transcriber: Transcriber,
    archives: Archives,
    health: HealthMonitor,
    probe_clip: Any,
) -> StreamServices:
    """What dictation connections need. VAD and speaker encoder load here,
    before any model: they are cheap to fail on, unlike a model load."""
    vad = await asyncio.to_thread(shared_vad)
    speaker = await asyncio.to_thread(shared_speaker_filter)
    if probe_clip is not None:
        # The first embedding pays one-off costs (JIT-compiled resampling in
        # Resemblyzer's preprocessing): pay them now, not in a user's first stop.
        await asyncio.to_thread(speaker.embed, probe_clip)
    return StreamServices(
        registry=SessionRegistry.from_settings(settings, archives.root),
        decoder=StreamDecoder(transcriber),
        manager=manager,
        settings=stream_settings(settings, engine),
        new_vad=vad.new_stream,
        new_speaker=lambda: SpeakerGate(speaker),
        new_log=archives.new_connection,
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


async def build_services(engine: Engine, settings: Settings, base_dir: Path, metrics: Metrics) -> Services:
    """Every service object of one app, wired together (nothing started yet)."""
    health: HealthMonitor
    manager = AsrModelManager(
        engine,
        coload=settings.coload,
        idle_seconds=settings.idle_evict_seconds,
        load_timeout=settings.load_timeout_sec,
        decode_timeout=settings.decode_timeout_sec,
        max_queued=settings.max_queued_decodes,
        on_load_failure=lambda unit, reason: health.on_load_failure(unit, reason),
        observer=metrics,
    )
    probe_clip = load_probe_clip()
    health = HealthMonitor(settings, manager, engine.model_id, probe_clip)
    transcriber = Transcriber(engine, manager, settings, on_text=health.record_text)
    archives = build_archives(settings, engine, base_dir)
    return Services(
        settings=settings,
        engine=engine,
        metrics=metrics,
        manager=manager,
        health=health,
        transcriber=transcriber,
        aligner=Aligner(engine, manager, transcriber),
        archives=archives,
        stream=await build_stream_services(
            settings, engine, manager, transcriber, archives, health, probe_clip
        ),
    )
