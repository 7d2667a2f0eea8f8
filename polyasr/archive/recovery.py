"""Crash recovery: at start-up, a connection folder without a ``close`` line belonged to a
killed process; its PCM is cut to whole samples, encoded and closed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import soundfile as sf

from polyasr.archive.connection import close_fields, encode_flac
from polyasr.archive.layout import AUDIO_FORMAT, CONNECTIONS, DAY, EVENTS, FLAC, FLAC_PARTIAL, PCM, event_line
from polyasr.core.constants import BYTES_PER_SAMPLE, SAMPLE_RATE

log = logging.getLogger("polyasr.archive")


_FORMAT_LINE_SCAN = 1_000  # it comes before the first audio: near the top
_TAIL_BYTES = 1 << 16  # more than a close line, read from the end of events.jsonl


def _connection_folders(root: Path) -> Iterator[Path]:
    base = root / CONNECTIONS
    if not base.is_dir():
        return
    for day in sorted(base.iterdir()):
        if day.is_dir() and DAY.fullmatch(day.name):
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
    (folder / FLAC_PARTIAL).unlink(missing_ok=True)
    audio_file, error = encode_flac(folder, rate)
    fields = {**close_fields(audio_bytes, audio_file, error, rate), "recovered": True}
    t_ms = int(last.get("t_ms", 0)) if last is not None else 0
    with open(events, "a", encoding="utf-8") as f:
        f.write(event_line(t_ms, "close", fields))
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
