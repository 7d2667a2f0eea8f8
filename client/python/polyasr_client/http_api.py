"""The HTTP half of the service: batch transcription, alignment, health, unload.

Uploads stream from the file (a long recording is never read into memory)
and report bytes sent, which is all a progress bar can honestly show: the
server's own work has no progress signal.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from polyasr_client.errors import ConnectionLost, error_from_response
from polyasr_client.messages import DEFAULT_URL, api_key_or_env
from polyasr_client.results import AlignResult, Diarization, ManifestEntry, Transcription

ProgressCallback = Callable[[int, int], None]
"""``(bytes sent, total bytes)``; total is 0 when the length is unknown."""

AudioInput = bytes | str | os.PathLike[str]
"""Encoded audio in any container the server decodes, or a path to it."""

PLAIN_FORMATS = ("text", "srt", "vtt")
"""Response formats the server answers as plain text rather than JSON."""


class PolyAsrClient:
    """Async client of the HTTP endpoints of one polyasr server."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``api_key``: the server's ``POLYASR_API_KEY`` (default: that environment variable)."""
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key_or_env(api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else None,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    async def __aenter__(self) -> PolyAsrClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def transcribe(
        self,
        audio: AudioInput,
        *,
        filename: str | None = None,
        language: str | None = None,
        context: str | None = None,
        response_format: str = "json",
        on_progress: ProgressCallback | None = None,
    ) -> Transcription:
        """``POST /v1/audio/transcriptions``; ``text``, ``srt`` and ``vtt``
        answer plain text, which is the result's ``text``."""
        fields = _fields(language=language, context=context, response_format=response_format)
        response = await self._upload("/v1/audio/transcriptions", audio, filename, fields, on_progress)
        if response_format.lower() in PLAIN_FORMATS:
            return Transcription(text=response.text)
        body = response.json()
        return Transcription(
            text=str(body.get("text", "")),
            language=body.get("language"),
            duration=body.get("duration"),
            raw=body,
        )

    async def diarize(
        self,
        audio: AudioInput,
        *,
        filename: str | None = None,
        language: str | None = None,
        context: str | None = None,
        known_speakers: Mapping[str, AudioInput] | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Diarization:
        """``POST /v1/audio/transcriptions`` with ``response_format=diarized_json``:
        who said what. ``known_speakers`` maps up to four names to a 2-10 s
        recording of each (encoded audio or a path), sent as data URLs."""
        fields: dict[str, Any] = _fields(
            language=language,
            context=context,
            response_format="diarized_json",
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        if known_speakers:
            fields["known_speaker_names[]"] = list(known_speakers)
            fields["known_speaker_references[]"] = [_data_url(a) for a in known_speakers.values()]
        response = await self._upload("/v1/audio/transcriptions", audio, filename, fields, on_progress)
        return Diarization.from_json(response.json())

    async def align(
        self,
        audio: AudioInput,
        *,
        text: str | None = None,
        language: str | None = None,
        max_chunk_seconds: int | None = None,
        diarize: bool = False,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        filename: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AlignResult:
        """``POST /v1/align``: word and sentence times, of ``text`` when given
        (no recognition pass), else of what the server recognizes; with
        ``diarize``, sentences cut at speaker turns, each with its speaker."""
        fields = _fields(
            language=language,
            text=text,
            max_chunk_seconds=max_chunk_seconds,
            diarize="true" if diarize else None,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        response = await self._upload("/v1/align", audio, filename, fields, on_progress)
        return AlignResult.from_json(response.json())

    async def align_manifest(
        self,
        entries: Sequence[ManifestEntry],
        *,
        language: str | None = None,
        max_chunk_seconds: int | None = None,
        diarize: bool = False,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> AlignResult:
        """``POST /v1/align/manifest``: clips already on the server, aligned in
        order as one result (with ``diarize``, speakers across all of them)."""
        body: dict[str, Any] = {"manifest": [e.to_json() for e in entries]}
        optional = {
            "language": language,
            "max_chunk_seconds": max_chunk_seconds,
            "diarize": diarize or None,
            "min_speakers": min_speakers,
            "max_speakers": max_speakers,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        response = await self._request("POST", "/v1/align/manifest", json=body)
        return AlignResult.from_json(response.json())

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (always 200; read ``status``)."""
        return (await self._request("GET", "/health")).json()

    async def unload(self) -> dict[str, Any]:
        """``POST /model/unload``: evict every resident model unit now."""
        return (await self._request("POST", "/model/unload")).json()

    async def _upload(
        self,
        path: str,
        audio: AudioInput,
        filename: str | None,
        fields: dict[str, Any],
        on_progress: ProgressCallback | None,
    ) -> httpx.Response:
        with _open_audio(audio, filename) as (name, fileobj):
            request = self._http.build_request("POST", path, data=fields, files={"file": (name, fileobj)})
            if on_progress is not None:
                total = int(request.headers.get("Content-Length", 0))
                request.stream = _ProgressStream(request.stream, total, on_progress)
            return await self._send(request)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self._send(self._http.build_request(method, path, **kwargs))

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._http.send(request)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"cannot reach {self.base_url}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response.status_code, response.headers, response.text)
        return response


def _fields(**values: object) -> dict[str, str]:
    """Form fields, leaving out the unset ones so server defaults apply."""
    return {name: str(value) for name, value in values.items() if value is not None}


def _data_url(audio: AudioInput) -> str:
    """Encoded audio (or the file at a path) as a base64 data URL; the server
    reads the container from the bytes, so the media type stays generic."""
    data = audio if isinstance(audio, bytes) else Path(audio).read_bytes()
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode("ascii")


@contextlib.contextmanager
def _open_audio(audio: AudioInput, filename: str | None) -> Iterator[tuple[str, IO[bytes]]]:
    """A named binary stream; the name's suffix hints the container."""
    if isinstance(audio, bytes):
        yield filename or "audio.wav", io.BytesIO(audio)
        return
    path = Path(audio)
    with path.open("rb") as fileobj:
        yield filename or path.name, fileobj


class _ProgressStream(httpx.AsyncByteStream):
    """The request body, reporting each chunk once the transport took it."""

    def __init__(self, inner: Any, total: int, callback: ProgressCallback) -> None:
        self._inner = inner
        self._total = total
        self._callback = callback

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self._inner:
            yield chunk
            sent += len(chunk)
            self._callback(sent, self._total)
