"""Archive of one WebSocket connection (contract §9): the WebSocket part.

Layout: ``<root>/sessions/<YYYY-MM-DD>/<HHMMSS>-ws-<8 hex>/`` holding
``events.jsonl`` and, while the connection is open, ``input.pcm``; at close
the PCM becomes ``input.flac``.

Both files are appended and flushed as things happen, so a crash leaves a
readable event log and the raw audio up to the crash. Archiving is best
effort: the first failure (full disk, permissions) is logged once and turns
the archive off for the rest of the connection, so recognition never breaks
and a broken disk does not flood the log on every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf

from polyasr_constants import BYTES_PER_SECOND, SAMPLE_RATE

log = logging.getLogger("polyasr.wslog")

_BYTES_PER_MS = BYTES_PER_SECOND // 1000  # PCM16 mono
_FLAC_BLOCK_BYTES = 1 << 20  # even, so no block splits a sample


def _jsonable(value: Any) -> Any:
    """numpy scalars as numbers (callers pass measured durations), anything else as text."""
    return value.item() if isinstance(value, np.generic) else str(value)


class WsSessionLog:
    """The archive of one connection; every method is a no-op when ``root`` is ``None``.

    ``session_id`` is a server-generated log id, unrelated to the client's
    ``sessionId``: a resumed session gets a new connection and a new folder.
    Nothing touches the disk until the first event or audio. Thread-safe:
    the handler logs from the event loop and from its decode workers.
    """

    def __init__(self, root: Path | None, backend: str, model: str) -> None:
        self.root = root
        self.backend = backend
        self.model = model
        self.session_id = secrets.token_hex(4)
        self.audio_bytes = 0
        self._opened_at = time.monotonic()
        self._created = datetime.now()
        self._dir: Path | None = None
        self._events: IO[str] | None = None
        self._pcm: IO[bytes] | None = None
        self._off = root is None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The session folder, once something has been written."""
        return self._dir

    def event(self, type: str, **fields: Any) -> None:
        """Append one line ``{"t_ms", "type", **fields}`` to ``events.jsonl``."""
        with self._lock:
            if not (self._off or self._closed):
                self._write_event(type, fields)

    async def audio(self, pcm: bytes) -> None:
        """Append raw PCM16LE (16 kHz mono) to ``input.pcm``; returns once written,
        so a frame is acknowledged only after its audio is on disk."""
        await asyncio.to_thread(self._append_audio, pcm)

    def _append_audio(self, pcm: bytes) -> None:
        with self._lock:
            if self._off or self._closed or not pcm:
                return
            try:
                if self._pcm is None:
                    self._pcm = open(self._folder() / "input.pcm", "ab")  # noqa: SIM115 - closed in close()
                self._pcm.write(pcm)
                self._pcm.flush()
                self.audio_bytes += len(pcm)
            except Exception:
                log.warning("could not append audio; session log %s is off", self.session_id, exc_info=True)
                self._off = True

    def close(self) -> None:
        """Write the ``close`` line last, then turn ``input.pcm`` into ``input.flac``.

        ``duration_ms`` is the archived audio's duration; the line's own
        ``t_ms`` is how long the connection lasted. Safe to call twice. FLAC
        encoding blocks, so call it off the event loop.
        """
        with self._lock:
            if self._closed:
                return
            if not self._off:
                duration_ms = self.audio_bytes // _BYTES_PER_MS
                self._write_event("close", {"audio_bytes": self.audio_bytes, "duration_ms": duration_ms})
            self._closed = True
        for handle in (self._events, self._pcm):
            if handle is not None:
                try:
                    handle.close()
                except Exception:
                    log.warning("could not close a session log file in %s", self._dir, exc_info=True)
        if self._dir is not None:
            self._pcm_to_flac(self._dir / "input.pcm")

    def _folder(self) -> Path:
        """Create the session folder and write the ``start`` line, on first use."""
        if self._dir is None:
            assert self.root is not None
            folder = (
                self.root
                / "sessions"
                / self._created.strftime("%Y-%m-%d")
                / f"{self._created.strftime('%H%M%S')}-ws-{self.session_id}"
            )
            folder.mkdir(parents=True, exist_ok=True)
            self._dir = folder
            self._events = open(folder / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._append_line(
                "start",
                {"session_id": self.session_id, "kind": "ws", "model": self.model, "backend": self.backend},
            )
        return self._dir

    def _write_event(self, type: str, fields: dict[str, Any]) -> None:
        try:
            self._folder()
            self._append_line(type, fields)
        except Exception:
            log.warning("could not log %r; session log %s is off", type, self.session_id, exc_info=True)
            self._off = True

    def _append_line(self, type: str, fields: dict[str, Any]) -> None:
        assert self._events is not None
        t_ms = int((time.monotonic() - self._opened_at) * 1000)
        line = json.dumps({"t_ms": t_ms, "type": type, **fields}, ensure_ascii=False, default=_jsonable)
        self._events.write(line + "\n")
        self._events.flush()

    @staticmethod
    def _pcm_to_flac(pcm_path: Path) -> None:
        """Lossless and about half the size; the PCM stays if encoding fails.

        Converted in blocks, so an hour-long session is never all in memory.
        """
        flac_path = pcm_path.with_suffix(".flac")
        try:
            if not pcm_path.exists():
                return
            if pcm_path.stat().st_size >= 2:
                with (
                    open(pcm_path, "rb") as pcm,
                    sf.SoundFile(flac_path, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC") as flac,
                ):
                    while block := pcm.read(_FLAC_BLOCK_BYTES):
                        flac.write(np.frombuffer(block[: len(block) // 2 * 2], dtype="<i2"))
            pcm_path.unlink()
        except Exception:
            log.warning("could not convert %s to FLAC; keeping the PCM", pcm_path, exc_info=True)
            with contextlib.suppress(OSError):
                flac_path.unlink(missing_ok=True)
