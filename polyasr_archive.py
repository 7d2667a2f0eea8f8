"""Archives of what clients sent (contract §9): uploads, dictation connections,
crash recovery and retention, under one root.

Layout under ``<LOG_DIR>``::

    http/<YYYY-MM-DD>/<HHMMSS>-<8 hex><suffix>   an upload's bytes
    http/<YYYY-MM-DD>/<HHMMSS>-<8 hex>.json      and its sidecar
    sessions/<YYYY-MM-DD>/<HHMMSS>-ws-<8 hex>/   one dictation connection:
        events.jsonl   one JSON object per line, ``start`` first, ``close`` last
        input.pcm      while open: the accepted PCM16, appended in ``seq`` order
        input.flac     once closed: the same samples, lossless

A connection folder is *complete* once its ``close`` line is there: by then the
FLAC is final and the PCM gone (or, if encoding failed, the PCM kept and the
close line saying so). A folder without ``close`` belongs to a connection that
is still open, or to a process that was killed: :func:`recover` completes
those at start-up. Nothing else under the root (the stop-result store, the
server's own log) is ever touched here.

Archiving is best effort: a full disk or a permission error is logged and
never fails a request or a dictation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import soundfile as sf

from polyasr_config import Settings
from polyasr_constants import BYTES_PER_SAMPLE, SAMPLE_RATE

log = logging.getLogger("polyasr.archive")

UPLOADS = "http"
CONNECTIONS = "sessions"
EVENTS = "events.jsonl"
PCM = "input.pcm"
FLAC = "input.flac"
AUDIO_FORMAT = "audio_format"  # the events line naming a rate other than 16 kHz
_FORMAT_LINE_SCAN = 1_000  # it comes before the first audio: near the top
_FLAC_PARTIAL = "input.flac.partial"  # a FLAC being written: never taken for the final one
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_FLAC_BLOCK_BYTES = 1 << 20  # even, so no block splits a sample
_TAIL_BYTES = 1 << 16  # more than a close line, read from the end of events.jsonl
PRUNE_INTERVAL_SEC = 3600.0


def _day_folder(root: Path, kind: str, now: datetime) -> Path:
    return root / kind / now.strftime("%Y-%m-%d")


def _jsonable(value: Any) -> Any:
    """numpy scalars as numbers (callers pass measured durations), anything else as text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _line(t_ms: int, type: str, fields: dict[str, Any]) -> str:
    return json.dumps({"t_ms": t_ms, "type": type, **fields}, ensure_ascii=False, default=_jsonable) + "\n"


class UploadArchive:
    """Successful batch uploads: ``http/<date>/HHMMSS-<8 hex><suffix>`` plus a ``.json`` sidecar."""

    def __init__(self, root: Path | None, *, backend: str, model: str) -> None:
        self.root = root
        self.backend = backend
        self.model = model

    def record(self, upload: BinaryIO, filename: str, language: str | None, text: str) -> Path | None:
        """Archive one upload (blocking); returns the sidecar path, or ``None`` if disabled or failed."""
        if self.root is None:
            return None
        try:
            now = datetime.now()
            folder = _day_folder(self.root, UPLOADS, now)
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{now.strftime('%H%M%S')}-{secrets.token_hex(4)}"
            suffix = Path(filename).suffix[:16] if filename else ""
            upload.seek(0)
            with open(folder / f"{stem}{suffix}", "wb") as out:
                shutil.copyfileobj(upload, out)
            sidecar = folder / f"{stem}.json"
            meta = {
                "timestamp": now.isoformat(timespec="seconds"),
                "filename": filename,
                "language": language,
                "model": self.model,
                "backend": self.backend,
                "text": text,
            }
            sidecar.write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
            return sidecar
        except Exception:
            log.warning("could not archive upload %r", filename, exc_info=True)
            return None


class _Writer:
    """One thread that does every connection's archive writes, in submission order.

    One shared thread rather than one per connection: a frame is a few KB
    appended to a page-cache file (microseconds), so a single thread keeps up
    with hundreds of live dictations, costs one thread whatever
    ``MAX_SESSIONS`` is, and one FIFO gives each connection's events and audio
    the order they were logged in. The slow part, FLAC encoding at close, runs
    in the closing caller's thread, so it never holds up other connections' acks.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; it must not raise (failures are the job's to log)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="polyasr-archive", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def call(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` after everything queued before it; blocks the calling thread."""
        done = threading.Event()
        result: list[Any] = [None]

        def run() -> None:
            try:
                result[0] = job()
            finally:
                done.set()

        self.submit(run)
        done.wait()
        return result[0]

    async def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` after everything queued before it; resolves once it has run.

        The job runs even if the awaiting task is cancelled: a frame the
        session has accepted is archived whether or not its ack goes out.
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not finished.done():
                finished.set_result(None)

        def run() -> None:
            try:
                job()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                    loop.call_soon_threadsafe(resolve)

        self.submit(run)
        await finished

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:
                log.exception("archive write failed")


_WRITER = _Writer()


class ConnectionArchive:
    """The archive of one dictation connection; a no-op when ``root`` is ``None``.

    ``session_id`` is a server-generated log id, unrelated to the client's
    ``sessionId``: a resumed session gets a new connection and a new folder.
    Nothing touches the disk until the first event or audio. ``event`` and
    ``audio`` may be called from the event loop and from decode threads; the
    files are only ever touched by the shared writer thread, and by ``close``
    once the writer is done with them.
    """

    def __init__(
        self,
        root: Path | None,
        backend: str,
        model: str,
        on_close: Callable[[ConnectionArchive], None] | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.rate = SAMPLE_RATE  # of the archived PCM16; settable until the first audio
        self.session_id = secrets.token_hex(4)
        self.audio_bytes = 0
        created = datetime.now()
        self.path: Path | None = None  # the planned folder; created on first write
        if root is not None:
            self.path = _day_folder(root, CONNECTIONS, created) / f"{created:%H%M%S}-ws-{self.session_id}"
        self._on_close = on_close
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
            line = _line(t_ms, type, fields)
            _WRITER.submit(lambda: self._write_event(t_ms, line))

    async def audio(self, pcm: bytes) -> None:
        """Append PCM16LE (mono, at ``rate``) to ``input.pcm``; resolves once it is written
        and flushed to the OS (it survives the process being killed), so a frame
        is acknowledged only after its audio is in the archive."""
        with self._lock:
            if self._closing or not pcm:
                return
            t_ms = self._t_ms()
        await _WRITER.run(lambda: self._write_audio(t_ms, pcm))

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
                if _WRITER.call(self._end_audio):
                    assert self.path is not None
                    audio_file, error = encode_flac(self.path, self.rate)
                    fields = _close_fields(self.audio_bytes, audio_file, error, self.rate)
                    _WRITER.call(lambda: self._write_close(t_ms, fields))
            finally:
                if self._on_close is not None:
                    self._on_close(self)

    def _t_ms(self) -> int:
        return int((time.monotonic() - self._opened_at) * 1000)

    # -- on the writer thread ------------------------------------------------

    def _write_event(self, t_ms: int, line: str) -> None:
        try:
            if self._open(t_ms):
                assert self._events is not None
                self._events.write(line)
                self._events.flush()
        except Exception:
            log.warning("could not archive an event; %s is off", self.path, exc_info=True)
            self._off = True

    def _write_audio(self, t_ms: int, pcm: bytes) -> None:
        try:
            if self._open(t_ms):
                assert self.path is not None
                if self._pcm is None:
                    self._note_rate(t_ms)
                    self._pcm = open(self.path / PCM, "ab")  # noqa: SIM115 - closed in _end_audio
                self._pcm.write(pcm)
                self._pcm.flush()
                self.audio_bytes += len(pcm)
        except Exception:
            log.warning("could not archive audio; %s is off", self.path, exc_info=True)
            self._off = True

    def _note_rate(self, t_ms: int) -> None:
        """A rate other than 16 kHz is written down before the first audio, so
        that recovery after a kill converts the PCM at the right rate."""
        if self.rate != SAMPLE_RATE:
            assert self._events is not None
            self._events.write(_line(t_ms, AUDIO_FORMAT, {"rate": self.rate, "encoding": "pcm_s16le"}))
            self._events.flush()

    def _open(self, t_ms: int) -> bool:
        """Create the folder and write the ``start`` line on first use; ``False`` once off."""
        if self._off:
            return False
        if self._events is None:
            assert self.path is not None
            self.path.mkdir(parents=True, exist_ok=True)
            self._events = open(self.path / EVENTS, "a", encoding="utf-8")  # noqa: SIM115 - closed at close
            ids = {"session_id": self.session_id, "kind": "ws", "model": self.model, "backend": self.backend}
            self._events.write(_line(t_ms, "start", ids))
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
            self._events.write(_line(t_ms, "close", fields))
            self._events.flush()
            os.fsync(self._events.fileno())
        except Exception:
            log.warning("could not write the close line of %s", self.path, exc_info=True)
        with contextlib.suppress(OSError):
            self._events.close()


def _close_fields(
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
    pcm, flac, partial = folder / PCM, folder / FLAC, folder / _FLAC_PARTIAL
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


# -- recovery ------------------------------------------------------------------


def _connection_folders(root: Path) -> Iterator[Path]:
    base = root / CONNECTIONS
    if not base.is_dir():
        return
    for day in sorted(base.iterdir()):
        if day.is_dir() and _DAY.fullmatch(day.name):
            yield from sorted(f for f in day.iterdir() if f.is_dir() and "-ws-" in f.name)


def _complete_end(f: BinaryIO, size: int) -> int:
    """The offset just past the file's last newline (0 if none), read backwards in blocks."""
    pos = size
    while pos > 0:
        step = min(_TAIL_BYTES, pos)
        pos -= step
        f.seek(pos)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos + newline + 1
    return 0


def _last_event(events: Path) -> dict[str, Any] | None:
    """The last line of ``events.jsonl`` if it is a short, whole JSON object
    (a ``close`` line always is); a torn last line (killed mid-write) is cut off."""
    if not events.exists():
        return None
    with open(events, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = _complete_end(f, size)
        if end < size:
            f.truncate(end)
        start = max(0, end - _TAIL_BYTES)
        f.seek(start)
        tail = f.read(end - start)
    try:
        last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    except ValueError:
        return None
    return last if isinstance(last, dict) else None


def _archived_rate(events: Path) -> int:
    """The rate an ``audio_format`` line names (written before any audio), else 16 kHz."""
    if events.exists():
        with open(events, encoding="utf-8", errors="replace") as f:
            for line in itertools.islice(f, _FORMAT_LINE_SCAN):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("type") == AUDIO_FORMAT:
                        return int(event["rate"])
    return SAMPLE_RATE


def _recover_one(folder: Path) -> bool:
    """Complete one folder left without ``close``; ``False`` if it was complete."""
    events = folder / EVENTS
    last = _last_event(events)
    if last is not None and last.get("type") == "close":
        return False
    pcm = folder / PCM
    rate = _archived_rate(events)
    if pcm.exists():
        audio_bytes = pcm.stat().st_size
    elif (folder / FLAC).exists():  # killed after the rename, before the close line
        audio_bytes = sf.info(folder / FLAC).frames * BYTES_PER_SAMPLE
    else:
        audio_bytes = 0
    (folder / _FLAC_PARTIAL).unlink(missing_ok=True)
    audio_file, error = encode_flac(folder, rate)
    fields = {**_close_fields(audio_bytes, audio_file, error, rate), "recovered": True}
    t_ms = int(last.get("t_ms", 0)) if last is not None else 0
    with open(events, "a", encoding="utf-8") as f:
        f.write(_line(t_ms, "close", fields))
        f.flush()
        os.fsync(f.fileno())
    return True


def recover(root: Path, is_open: Callable[[Path], bool] = lambda _: False) -> list[Path]:
    """Complete every connection folder a killed process left open (blocking).

    Its PCM holds every frame that was acknowledged (each was flushed before
    its ack), so converting it loses nothing; the close line gets
    ``"recovered": true``. Folders of open connections are left alone.
    """
    recovered = []
    for folder in _connection_folders(root):
        if is_open(folder):
            continue
        try:
            if _recover_one(folder):
                recovered.append(folder)
        except Exception:
            log.warning("could not recover the archive %s", folder, exc_info=True)
    if recovered:
        log.info("recovered %d archive folder(s) a killed process left open", len(recovered))
    return recovered


# -- retention -----------------------------------------------------------------


@dataclass
class _Item:
    """One thing retention deletes whole: a connection folder, or an upload and its sidecar."""

    key: Path  # the folder, or the upload's path without suffix
    paths: list[Path]
    mtime: float
    size: int


def _stat_sum(paths: list[Path]) -> tuple[float, int]:
    mtime, size = 0.0, 0
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            mtime = max(mtime, st.st_mtime)
            size += st.st_size if path.is_file() else 0
    return mtime, size


def _items(root: Path) -> Iterator[_Item]:
    for kind in (UPLOADS, CONNECTIONS):
        base = root / kind
        if not base.is_dir():
            continue
        for day in base.iterdir():
            if not (day.is_dir() and _DAY.fullmatch(day.name)):
                continue
            if kind == CONNECTIONS:
                for folder in day.iterdir():
                    try:
                        files = [folder, *folder.iterdir()] if folder.is_dir() else [folder]
                    except OSError:  # deleted meanwhile, or unreadable: not ours to count
                        continue
                    yield _Item(folder, [folder], *_stat_sum(files))
                continue
            uploads: dict[str, list[Path]] = {}
            for path in day.iterdir():
                uploads.setdefault(path.name.split(".", 1)[0], []).append(path)
            for stem, paths in uploads.items():
                yield _Item(day / stem, paths, *_stat_sum(paths))


def _delete(item: _Item) -> None:
    for path in item.paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prune(
    root: Path,
    *,
    max_age_days: float,
    max_bytes: float,
    is_open: Callable[[Path], bool] = lambda _: False,
) -> list[Path]:
    """Delete archived uploads and connection folders, oldest first (blocking).

    An item goes when it is older than ``max_age_days`` (by modification
    time) or while both archives together exceed ``max_bytes``; ``0``
    disables either rule. The folder of an open connection is never deleted.
    Only date folders under ``http/`` and ``sessions/`` are looked at.
    """
    items = sorted(_items(root), key=lambda item: item.mtime)
    total = sum(item.size for item in items)
    cutoff = time.time() - max_age_days * 86400 if max_age_days > 0 else None
    deleted = []
    for item in items:
        too_old = cutoff is not None and item.mtime < cutoff
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big):
            break  # sorted oldest first: nothing later is due either
        if is_open(item.key):
            continue
        try:
            _delete(item)
        except OSError:
            log.warning("could not delete the archive %s", item.key, exc_info=True)
            continue
        total -= item.size
        deleted.append(item.key)
    _drop_empty_days(root)
    return deleted


def _drop_empty_days(root: Path) -> None:
    """Remove emptied date folders, except today's (a writer may be about to use it)."""
    today = datetime.now().strftime("%Y-%m-%d")
    for kind in (UPLOADS, CONNECTIONS):
        base = root / kind
        if not base.is_dir():
            continue
        for day in base.iterdir():
            if day.is_dir() and _DAY.fullmatch(day.name) and day.name != today:
                with contextlib.suppress(OSError):
                    day.rmdir()  # fails, harmlessly, unless empty


class Archives:
    """Both archives of one server: what the app builds once and wires in.

    ``uploads`` archives batch uploads; ``new_connection()`` gives each
    dictation connection its archive; ``start()`` recovers what a killed
    process left open and starts retention (at once, then hourly);
    ``close()`` stops retention and completes any connection still open.
    With ``root`` ``None`` everything is a no-op.
    """

    def __init__(self, root: Path | None, backend: str, model: str, settings: Settings) -> None:
        self.root = root
        self.backend = backend
        self.model = model
        self.max_age_days = settings.log_retention_days
        self.max_bytes = settings.log_max_gb * 1e9
        self.uploads = UploadArchive(root, backend=backend, model=model)
        self._open: dict[Path, ConnectionArchive] = {}
        self._open_lock = threading.Lock()
        self._timer: asyncio.Task[None] | None = None

    def new_connection(self) -> ConnectionArchive:
        """The archive of a newly accepted connection; its folder is safe from retention until closed."""
        archive = ConnectionArchive(self.root, self.backend, self.model, on_close=self._closed)
        if archive.path is not None:
            with self._open_lock:
                self._open[archive.path] = archive
        return archive

    def is_open(self, folder: Path) -> bool:
        with self._open_lock:
            return folder in self._open

    async def start(self) -> None:
        """Recover folders a killed process left open, then start the retention timer."""
        if self.root is None:
            return
        await asyncio.to_thread(recover, self.root, self.is_open)
        if self.max_age_days > 0 or self.max_bytes > 0:
            self._timer = asyncio.get_running_loop().create_task(self._prune_forever())

    async def prune(self) -> list[Path]:
        """Apply retention once, off the event loop; what was deleted."""
        if self.root is None:
            return []
        return await asyncio.to_thread(
            prune, self.root, max_age_days=self.max_age_days, max_bytes=self.max_bytes, is_open=self.is_open
        )

    async def close(self) -> None:
        """Stop retention, complete connections still open and let the writer finish."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        with self._open_lock:
            still_open = list(self._open.values())
        for archive in still_open:
            await asyncio.to_thread(archive.close)
        if self.root is not None:
            await asyncio.to_thread(_WRITER.call, lambda: None)

    async def _prune_forever(self) -> None:
        while True:
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("retention deleted %d archived item(s)", len(deleted))
            except Exception:
                log.warning("archive retention failed; retrying in an hour", exc_info=True)
            await asyncio.sleep(PRUNE_INTERVAL_SEC)

    def _closed(self, archive: ConnectionArchive) -> None:
        with self._open_lock:
            if archive.path is not None:
                self._open.pop(archive.path, None)
