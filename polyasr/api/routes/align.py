"""Forced alignment: ``POST /v1/align`` (an upload) and ``/v1/align/manifest``
(server-local files); the work lives in polyasr.align."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from polyasr.align.chunks import DEFAULT_CHUNK_SEC, MAX_CHUNK_SEC
from polyasr.align.data import AlignInput, Alignment
from polyasr.align.languages import aligner_language
from polyasr.align.manifest import check_manifest, load_manifest
from polyasr.api.diarization import speaker_bounds
from polyasr.api.http import unless_disconnected
from polyasr.api.services import Services, ServicesDep
from polyasr.audio.decoding import decode_audio
from polyasr.core.threads import BATCH
from polyasr.diarize.speakers import Bounds
from polyasr.diarize.split import split_segments
from polyasr.diarize.turns import DiarizeOptions, Source
from polyasr.diarize.turns import diarize as find_turns

router = APIRouter()


class ManifestRequest(BaseModel):
    """Body of ``POST /v1/align/manifest``; ``manifest`` is checked by
    :func:`check_manifest` so its errors get the contract's statuses."""

    manifest: Any = None
    language: str | None = None
    max_chunk_seconds: int = Field(DEFAULT_CHUNK_SEC, ge=1, le=MAX_CHUNK_SEC)
    model: Any = None
    diarize: bool = False
    min_speakers: int | None = None
    max_speakers: int | None = None


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1, or an
    IPv4-mapped loopback); a hostname or no address is not."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _label(services: Services) -> str:
    return f"{services.engine.model_id} + {services.engine.aligner_id}"


async def _answer(
    services: Services, result: Alignment, inputs: list[AlignInput], bounds: Bounds | None
) -> dict[str, Any]:
    """The alignment as JSON; with ``bounds`` (``diarize=true``) its segments
    are cut at speaker turns, each carries ``speaker``, and ``turns`` lists
    who spoke when on the same timeline."""
    body = result.to_json(_label(services))
    if bounds is None:
        return body
    sources = [Source(item.samples, item.offset) for item in inputs]
    turns = await BATCH.run(find_turns, sources, DiarizeOptions(bounds=bounds))
    body["segments"] = [part.to_json() for part in split_segments(result.segments, turns)]
    body["turns"] = [{"speaker": t.speaker, "start": t.start, "end": t.end} for t in turns]
    return body


@router.post("/v1/align")
async def align(
    request: Request,
    services: ServicesDep,
    file: UploadFile = File(...),
    language: str | None = Form(None),
    max_chunk_seconds: int = Form(DEFAULT_CHUNK_SEC, ge=1, le=MAX_CHUNK_SEC),
    model: str | None = Form(None),
    text: str | None = Form(None),
    diarize: bool = Form(False),
    min_speakers: int | None = Form(None),
    max_speakers: int | None = Form(None),
) -> dict[str, Any]:
    """Word and sentence times for an upload; with ``text``, of that
    transcript (no ASR pass); with ``diarize``, split at speaker turns.
    ``model`` is accepted and ignored."""
    del model
    pinned = aligner_language(language)
    bounds = speaker_bounds(min_speakers, max_speakers) if diarize else None
    given = text.strip() if text and text.strip() else None
    settings = services.settings

    async def work() -> dict[str, Any]:
        async with services.audio_budget.hold() as held:
            cap, setting = settings.align_cap
            samples = await BATCH.run(decode_audio, file.file, cap, held.charge, setting)
            item = AlignInput(samples, given)
            item.check_text(settings.max_align_text_chars_per_sec)
            result = await services.aligner.align([item], pinned, max_chunk_seconds)
            return await _answer(services, result, [item], bounds)

    return await unless_disconnected(request, work())


@router.post("/v1/align/manifest")
async def align_manifest(body: ManifestRequest, request: Request, services: ServicesDep) -> dict[str, Any]:
    """Align server-local files in order, each shifted by its offset, as
    one result. Every entry is checked before any is aligned."""
    pinned = aligner_language(body.language)
    bounds = speaker_bounds(body.min_speakers, body.max_speakers) if body.diarize else None
    client = request.client.host if request.client else None
    settings = services.settings
    entries = check_manifest(
        body.manifest, settings.manifest_root_paths, is_loopback(client), settings.max_manifest_entries
    )

    async def work() -> dict[str, Any]:
        async with services.audio_budget.hold() as held:
            inputs = await BATCH.run(
                load_manifest, entries, settings.max_audio_sec, held.charge, settings.max_align_sec
            )
            for item in inputs:
                item.check_text(settings.max_align_text_chars_per_sec)
            result = await services.aligner.align(inputs, pinned, body.max_chunk_seconds)
            return await _answer(services, result, inputs, bounds)

    return await unless_disconnected(request, work())
