"""One dictation connection's archive: its event lines, its PCM while open and the lossless
FLAC it becomes at close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf

from polyasr.archive.budget import BUDGET_SPENT, DiskBudget
from polyasr.archive.layout import (
    AUDIO_FORMAT,
    CONNECTIONS,
    EVENTS,
    FLAC,
    FLAC_PARTIAL,
    PCM,
    day_folder,
    event_line,
)
from polyasr.archive.status import SESSIONS, ArchiveStatus
from polyasr.archive.writer import WRITER
from polyasr.core.constants import BYTES_PER_SAMPLE, SAMPLE_RATE

log = logging.getLogger("polyasr.archive")


_FLAC_BLOCK_BYTES = 1 << 20  # even, so no block splits a sample


class ConnectionArchive:
    """The archive of one dictation connection; a no-op when ``root`` is ``None``.

    ``session_id`` is a server-generated log id, unrelated to the client's
    ``sessionId``: a resumed session gets a new connection and a new folder.
    Nothing touches the disk until the first event or audio. ``event`` and
    ``audio`` may be called from the event loop and from decode threads; the
    files are only ever touched by the shared writer thread, and by ``close``
    once the writer is done with them.

    Best effort: the first write that fails, or that the byte ``budget``
    refuses, turns the archive of this connection off (a gap would misplace
    every later sample) and is counted in ``status``; the dictation goes on.
    """

    def __init__(
        self,
        root: Path | None,
        backend: str,
        model: str,
        on_close: Callable[[ConnectionArchive], None] | None = None,
        budget: DiskBudget | None = None,
        status: ArchiveStatus | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.rate = SAMPLE_RATE  # of the archived PCM16; settable until the first audio
        self.session_id = secrets.token_hex(4)
        self.audio_bytes = 0
        created = datetime.now()
        self.path: Path | None = None  # the planned folder; created on first write
        if root is not None:
            self.path = day_folder(root, CONNECTIONS, created) / f"{created:%H%M%S}-ws-{self.session_id}"
        self._on_close = on_close
        self._budget = budget
        self._status = status or ArchiveStatus()
        self._opened_at = time.monotonic()
        self._events: IO[str] | None = None
        self._pcm: IO[bytes] | None = None
        self._off = root is None  # disabled, or (set by the writer) after the first failure
        self._closing = root is None
        self._lock = threading.Lock()  # orders ``close`` after every queued write
        self._close_lock = threading.Lock()  # a second ``close`` waits for the first

    def event(self, type: str, **fields: Any) -> None:
        """Queue one line ``{"t_ms", "type", **fields}`` for ``events.jsonl``; never blocks."""
        with self._lock:
            if self._closing:
                return
            t_ms = self._t_ms()
            line = event_line(t_ms, type, fields)
            WRITER.submit(lambda: self._write_event(t_ms, line))

    async def audio(self, pcm: bytes) -> None:
        """Append PCM16LE (mono, at ``rate``) to ``input.pcm``; resolves once it is written
        and flushed to the OS (it survives the process being killed), so a frame
        is acknowledged only after its audio is in the archive."""
        with self._lock:
            if self._closing or not pcm:
                return
            t_ms = self._t_ms()
        await WRITER.run(lambda: self._write_audio(t_ms, pcm))

    def close(self) -> None:
        """Complete the folder: FLAC final, PCM gone, then the ``close`` line.

        ``duration_ms`` is the archived audio's duration; the line's own
        ``t_ms`` is how long the connection lasted. Blocks (FLAC encoding):
        call it off the event loop. Safe to call twice, from two threads.
        """
        with self._close_lock:
            with self._lock:
                if self._closing:
                    return
                self._closing = True
                t_ms = self._t_ms()
            try:
                if WRITER.call(self._end_audio):
                    assert self.path is not None
                    audio_file, error = encode_flac(self.path, self.rate)
                    fields = close_fields(self.audio_bytes, audio_file, error, self.rate)
                    WRITER.call(lambda: self._write_close(t_ms, fields))
            finally:
                if self._on_close is not None:
                    self._on_close(self)

    def _t_ms(self) -> int:
        return int((time.monotonic() - self._opened_at) * 1000)

    # -- on the writer thread ------------------------------------------------

    def _write_event(self, t_ms: int, line: str) -> None:
        try:
            if self._open(t_ms) and self._charge(len(line)):
                assert self._events is not None
                self._events.write(line)
                self._events.flush()
                self._status.ok(SESSIONS)
        except Exception as exc:  # noqa: BLE001 - best effort: counted, the dictation goes on
            self._fail(exc)

    def _write_audio(self, t_ms: int, pcm: bytes) -> None:
        try:
            if self._open(t_ms) and self._charge(len(pcm)):
                assert self.path is not None
                if self._pcm is None:
                    self._note_rate(t_ms)
                    self._pcm = open(self.path / PCM, "ab")  # noqa: SIM115 - closed in _end_audio
                self._pcm.write(pcm)
                self._pcm.flush()
                self.audio_bytes += len(pcm)
                self._status.ok(SESSIONS)
        except Exception as exc:  # noqa: BLE001 - best effort: counted, the dictation goes on
            self._fail(exc)

    def _charge(self, size: int) -> bool:
        """Whether the byte budget lets ``size`` more bytes in; if not, the archive is off."""
        if self._budget is None or self._budget.allow(size):
            return True
        self._off = True
        self._status.failed(SESSIONS, f"{self.path}: {BUDGET_SPENT}", skipped=True)
        return False

    def _fail(self, exc: Exception) -> None:
        log.debug("archive write failed; %s is off", self.path, exc_info=True)
        self._off = True
        self._status.failed(SESSIONS, exc)

    def _note_rate(self, t_ms: int) -> None:
        """A rate other than 16 kHz is written down before the first audio, so
        that recovery after a kill converts the PCM at the right rate."""
        if self.rate != SAMPLE_RATE:
            assert self._events is not None
            self._events.write(event_line(t_ms, AUDIO_FORMAT, {"rate": self.rate, "encoding": "pcm_s16le"}))
            self._events.flush()

    def _open(self, t_ms: int) -> bool:
        """Create the folder and write the ``start`` line on first use; ``False`` once off."""
        if self._off:
            return False
        if self._events is None:
            assert self.path is not None
            if not self._charge(0):
                return False
            self.path.mkdir(parents=True, exist_ok=True)
            self._events = open(self.path / EVENTS, "a", encoding="utf-8")  # noqa: SIM115 - closed at close
            ids = {"session_id": self.session_id, "kind": "ws", "model": self.model, "backend": self.backend}
            self._events.write(event_line(t_ms, "start", ids))
            self._events.flush()
        return True

    def _end_audio(self) -> bool:
        """Close ``input.pcm``; whether the folder exists (and so needs completing)."""
        if self._pcm is not None:
            with contextlib.suppress(OSError):
                self._pcm.close()
        return self._events is not None

    def _write_close(self, t_ms: int, fields: dict[str, Any]) -> None:
        assert self._events is not None
        try:
            self._events.write(event_line(t_ms, "close", fields))
            self._events.flush()
            os.fsync(self._events.fileno())
        except Exception:
            log.warning("could not write the close line of %s", self.path, exc_info=True)
        with contextlib.suppress(OSError):
            self._events.close()


def close_fields(
    audio_bytes: int, audio_file: str | None, error: str | None, rate: int = SAMPLE_RATE
) -> dict[str, Any]:
    """The ``close`` line: how much audio, and which file holds it (``None``: no audio)."""
    fields: dict[str, Any] = {
        "audio_bytes": audio_bytes,
        "duration_ms": audio_bytes * 1000 // (rate * BYTES_PER_SAMPLE),
        "audio_file": audio_file,
    }
    if error is not None:
        fields["flac_error"] = error
    return fields


def encode_flac(folder: Path, rate: int = SAMPLE_RATE) -> tuple[str | None, str | None]:
    """Turn ``input.pcm`` into ``input.flac``: ``(file holding the audio, error)``.

    Written under a temporary name, synced and renamed, so ``input.flac``
    only ever exists complete; the PCM is deleted after the rename and kept if
    encoding fails. Converted in blocks, so an hour-long session is never all
    in memory. An empty PCM is deleted.
    """
    pcm, flac, partial = folder / PCM, folder / FLAC, folder / FLAC_PARTIAL
    try:
        if not pcm.exists():
            return (FLAC if flac.exists() else None), None
        if pcm.stat().st_size < BYTES_PER_SAMPLE:
            pcm.unlink()
            return None, None
        with (
            open(pcm, "rb") as src,
            sf.SoundFile(partial, "w", rate, 1, "PCM_16", format="FLAC") as out,
        ):
            while block := src.read(_FLAC_BLOCK_BYTES):
                out.write(np.frombuffer(block[: len(block) // 2 * 2], dtype="<i2"))
        with open(partial, "rb") as done:
            os.fsync(done.fileno())
        os.replace(partial, flac)
        pcm.unlink()
        return FLAC, None
    except Exception as exc:
        log.warning("could not convert %s to FLAC; keeping the PCM", pcm, exc_info=True)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return PCM, f"{type(exc).__name__}: {exc}"
