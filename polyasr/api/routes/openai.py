"""OpenAI's transcription API: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

An upload is decoded piece by piece (at most ``MAX_PIECE_SEC`` each, cut at
quiet points) and each piece is queued for the model as soon as it is
decoded, so a long file neither waits to be decoded whole nor sits in memory
as float32; a client that goes away cancels what is still queued. The
answer's shapes live in polyasr.api.openai.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from polyasr.align.chunks import DEFAULT_CHUNK_SEC
from polyasr.align.data import AlignInput
from polyasr.align.errors import AlignValueError
from polyasr.align.languages import aligner_language
from polyasr.align.pipeline import Aligner
from polyasr.api.diarization import diarize_options, speaker_bounds
from polyasr.api.http import describe, unless_disconnected
from polyasr.api.openai import (
    FORMATS,
    GRANULARITIES,
    diarized_json,
    diarized_segment,
    srt,
    sse,
    stream_error,
    text_delta,
    text_done,
    verbose_json,
    vtt,
)
from polyasr.api.services import Services, ServicesDep
from polyasr.audio.budget import Reservation, seconds_to_bytes
from polyasr.audio.decoding import UploadAudio, decode_audio
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.languages import normalize_language
from polyasr.core.text import TimedText, join_text, join_texts
from polyasr.core.threads import BATCH
from polyasr.diarize.transcript import DiarizedSegment
from polyasr.diarize.turns import DiarizeOptions, Source, Turn, diarize
from polyasr.models.transcriber import (
    MAX_PIECE_SEC,
    PIECES_IN_FLIGHT,
    TimedPiece,
    TranscribeRequest,
    Transcription,
)

router = APIRouter()

# The most decoded audio a streamed transcription holds at once: the pieces in
# flight, the one being cut and the audio after its cut.
STREAMED_BYTES = seconds_to_bytes((PIECES_IN_FLIGHT + 2) * MAX_PIECE_SEC)


@dataclass(frozen=True)
class TranscriptionForm:
    """The transcription form, checked against OpenAI's rules."""

    file: UploadFile
    response_format: str  # one of FORMATS; an unknown one falls back to json
    granularities: frozenset[str]
    stream: bool
    language: str | None  # the Qwen name, None = detect
    requested_language: str | None  # as sent (archived)
    context: str
    diarize: DiarizeOptions | None = None  # set for diarized_json

    @property
    def words(self) -> bool:
        return "word" in self.granularities

    @property
    def needs_alignment(self) -> bool:
        """srt, vtt and word times come from the forced aligner."""
        return self.response_format in ("srt", "vtt") or self.words

    @property
    def keeps_audio(self) -> bool:
        """The aligner and diarization need the whole audio at once."""
        return self.needs_alignment or self.diarize is not None

    @property
    def request(self) -> TranscribeRequest:
        return TranscribeRequest(language=self.language, context=self.context)


async def transcription_form(
    request: Request,
    services: ServicesDep,
    file: UploadFile = File(...),
    model: str | None = Form(None),
    language: str | None = Form(None),
    context: str | None = Form(None),
    prompt: str | None = Form(None),
    response_format: str = Form("json"),
    stream: bool = Form(False),
    timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
    known_speaker_names: list[str] | None = Form(None, alias="known_speaker_names[]"),
    known_speaker_references: list[str] | None = Form(None, alias="known_speaker_references[]"),
    min_speakers: int | None = Form(None),
    max_speakers: int | None = Form(None),
) -> TranscriptionForm:
    """``model`` is accepted and ignored; ``context`` (else ``prompt``) is the hint,
    as long as the dictation socket's (``MAX_CONTEXT_CHARS``): a hint is part
    of every decode's prompt, so its length is the model's work and memory.
    The speaker fields are polyasr.api.diarization's."""
    del model
    limit = services.settings.max_context_chars
    for name, value in (("context", context), ("prompt", prompt)):
        if value is not None and len(value) > limit:
            raise HTTPException(
                422, f"'{name}' is longer than the {limit}-character limit (POLYASR_MAX_CONTEXT_CHARS)"
            )
    fmt = response_format.strip().lower()
    fmt = fmt if fmt in FORMATS else "json"
    granularities = frozenset(timestamp_granularities or ())
    if granularities - set(GRANULARITIES):
        raise HTTPException(400, f"timestamp_granularities must be among {', '.join(GRANULARITIES)}")
    if granularities and fmt != "verbose_json":
        raise HTTPException(
            400, "timestamp_granularities is only supported with response_format verbose_json"
        )
    if stream and fmt not in ("json", "text", "diarized_json"):
        raise HTTPException(400, "stream=true is supported with response_format json, text or diarized_json")
    bounds = speaker_bounds(min_speakers, max_speakers)
    fields = await request.form()
    diarize = await BATCH.run(
        diarize_options,
        {key: value for key, value in fields.items() if isinstance(value, str)},
        fmt == "diarized_json",
        known_speaker_names or [],
        known_speaker_references or [],
        bounds,
    )
    hint = context or prompt or ""
    return TranscriptionForm(
        file, fmt, granularities, stream, normalize_language(language), language, hint, diarize
    )


Form_ = Annotated[TranscriptionForm, Depends(transcription_form)]


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(request: Request, services: ServicesDep, form: Form_) -> Response | dict[str, Any]:
    """OpenAI-compatible batch transcription."""
    if form.stream and form.diarize is not None:
        return await _stream_diarized(services, form)
    if form.stream:
        return await _stream(services, form)
    if form.diarize is not None:
        return await unless_disconnected(request, _diarized(services, form, form.diarize))
    return await unless_disconnected(request, _transcribe(services, form))


@router.get("/v1/models")
async def models(services: ServicesDep) -> dict[str, Any]:
    engine = services.engine
    return {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "polyasr"}
            for model_id in (engine.model_id, engine.aligner_id)
        ],
    }


def _audio(services: Services, source: BinaryIO, keep: bool, held: Reservation) -> UploadAudio:
    """The upload, decoded as it is transcribed. Kept whole for the aligner
    (subtitles, word times), it is capped like an alignment."""
    settings = services.settings
    cap, setting = settings.align_cap if keep else (settings.max_audio_sec, "POLYASR_MAX_AUDIO_SEC")
    return UploadAudio(source, cap, MAX_PIECE_SEC, keep, held.charge, setting)


def _hold(services: Services, form: TranscriptionForm) -> Reservation:
    """This request's share of decoded audio: all of it when kept for the
    aligner, else no more than the pieces in flight at once."""
    return services.audio_budget.hold(None if form.keeps_audio else STREAMED_BYTES)


async def _transcribe(services: Services, form: TranscriptionForm) -> Response | dict[str, Any]:
    upload = form.file.file
    async with _hold(services, form) as held:
        audio = _audio(services, upload, form.needs_alignment, held)
        result = await services.transcriber.transcribe_stream(audio, form.request)
        archive = services.archives.uploads
        await BATCH.run(
            archive.record, upload, form.file.filename or "", form.requested_language, result.text
        )
        return await _formatted(services.aligner, form, result, audio)


async def _formatted(
    aligner: Aligner, form: TranscriptionForm, result: Transcription, audio: UploadAudio
) -> Response | dict[str, Any]:
    fmt = form.response_format
    if fmt == "text":
        return PlainTextResponse(result.text)
    if fmt == "json":
        return {"text": result.text}
    segments = list(result.pieces)
    if form.needs_alignment:
        segments = await _timed_segments(aligner, audio, result) or segments
    if fmt == "srt":
        return PlainTextResponse(srt(segments))
    if fmt == "vtt":
        return PlainTextResponse(vtt(segments), media_type="text/vtt")
    return verbose_json(result.text, result.language, audio.seconds, segments, form.words)


async def _timed_segments(
    aligner: Aligner, audio: UploadAudio, result: Transcription
) -> list[TimedText] | None:
    """Sentences with word times from the forced aligner, or ``None`` when
    the language is not one the aligner knows."""
    try:
        pinned = aligner_language(result.language)
    except AlignValueError:
        return None
    aligned = await aligner.align([AlignInput(audio.samples(), result.text)], pinned, DEFAULT_CHUNK_SEC)
    return [TimedText(s.start, s.end, s.text, list(s.words)) for s in aligned.segments]


def _spooled_copy(source: BinaryIO) -> BinaryIO:
    source.seek(0)
    copy = tempfile.SpooledTemporaryFile(max_size=1_048_576)  # noqa: SIM115 - closed by the stream
    shutil.copyfileobj(source, copy)
    copy.seek(0)
    return copy


async def _stream(services: Services, form: TranscriptionForm) -> StreamingResponse:
    """OpenAI's transcript stream. The first piece is decoded before the
    headers go out, so bad audio or an unavailable model still get their own
    status; a failure after that ends the stream with an ``error`` event."""
    # The stream outlives this handler (and the upload it was given): keep our own copy.
    upload = await BATCH.run(_spooled_copy, form.file.file)
    held = _hold(services, form)
    pieces = services.transcriber.stream_pieces(_audio(services, upload, False, held), form.request)
    try:
        await held.admit()
        first = await anext(pieces, None)
    except BaseException:
        await pieces.aclose()
        held.release()
        upload.close()
        raise
    events = _events(services, form, upload, held, first, pieces)
    return StreamingResponse(events, media_type="text/event-stream")


async def _events(
    services: Services,
    form: TranscriptionForm,
    upload: BinaryIO,
    held: Reservation,
    first: TimedPiece | None,
    rest: AsyncIterator[TimedPiece],
) -> AsyncIterator[bytes]:
    """A delta per decoded piece, then the whole text (or an ``error`` event)."""
    text = ""
    try:
        piece = first
        while piece is not None:
            joined = join_text(text, piece.text)
            if joined != text:
                yield sse(text_delta(joined[len(text) :]))
                text = joined
            piece = await anext(rest, None)
        services.transcriber.heard(text)
        archive = services.archives.uploads
        await BATCH.run(archive.record, upload, form.file.filename or "", form.requested_language, text)
        yield sse(text_done(text))
    except Exception as exc:  # noqa: BLE001 - the status line is gone: say it in the stream
        failure = describe(exc)
        yield sse(stream_error(failure.message, failure.code, failure.status))
    finally:
        await rest.aclose()
        held.release()
        upload.close()


async def _diarization(
    services: Services, upload: BinaryIO, options: DiarizeOptions, held: Reservation
) -> tuple[np.ndarray, list[Turn]]:
    """The upload decoded whole (capped and charged like an alignment) and its speaker turns."""
    cap, setting = services.settings.align_cap
    samples = await BATCH.run(decode_audio, upload, cap, held.charge, setting)
    return samples, await BATCH.run(diarize, [Source(samples)], options)


async def _diarized(services: Services, form: TranscriptionForm, options: DiarizeOptions) -> dict[str, Any]:
    upload = form.file.file
    async with _hold(services, form) as held:
        samples, turns = await _diarization(services, upload, options, held)
        segments = [s async for s in services.diarizer.segments(samples, turns, form.request)]
        text = join_texts([s.text for s in segments])
        archive = services.archives.uploads
        await BATCH.run(archive.record, upload, form.file.filename or "", form.requested_language, text)
        return diarized_json(text, len(samples) / SAMPLE_RATE, segments)


async def _stream_diarized(services: Services, form: TranscriptionForm) -> StreamingResponse:
    """The diarized stream: the audio is decoded and diarized before the
    headers go out (bad audio keeps its own status), then each segment is
    sent as its text delta and its ``transcript.text.segment`` event."""
    assert form.diarize is not None
    upload = await BATCH.run(_spooled_copy, form.file.file)
    held = _hold(services, form)
    try:
        await held.admit()
        samples, turns = await _diarization(services, upload, form.diarize, held)
    except BaseException:
        held.release()
        upload.close()
        raise
    segments = services.diarizer.segments(samples, turns, form.request)
    events = _diarized_events(services, form, upload, held, segments)
    return StreamingResponse(events, media_type="text/event-stream")


async def _diarized_events(
    services: Services,
    form: TranscriptionForm,
    upload: BinaryIO,
    held: Reservation,
    segments: AsyncIterator[DiarizedSegment],
) -> AsyncIterator[bytes]:
    text = ""
    try:
        async for segment in segments:
            joined = join_text(text, segment.text)
            if joined != text:
                yield sse(text_delta(joined[len(text) :], segment.id))
            yield sse(diarized_segment(segment))
            text = joined
        archive = services.archives.uploads
        await BATCH.run(archive.record, upload, form.file.filename or "", form.requested_language, text)
        yield sse(text_done(text))
    except Exception as exc:  # noqa: BLE001 - the status line is gone: say it in the stream
        failure = describe(exc)
        yield sse(stream_error(failure.message, failure.code, failure.status))
    finally:
        await segments.aclose()  # type: ignore[attr-defined]
        held.release()
        upload.close()
