"""Where the archive keeps things under the log folder, and how one event line is written.

Layout under ``<LOG_DIR>``::

    http/<YYYY-MM-DD>/<HHMMSS>-<8 hex>/          one batch upload:
        audio.flac     what it decoded to (16 kHz mono, lossless)
        upload.json    what was asked and answered
    sessions/<YYYY-MM-DD>/<HHMMSS>-ws-<8 hex>/   one dictation connection:
        events.jsonl   one JSON object per line, ``start`` first, ``close`` last
        input.pcm      while open: the accepted PCM16, appended in ``seq`` order
        input.flac     once closed: the same samples, lossless

A connection folder is *complete* once its ``close`` line is there: by then the FLAC
is final and the PCM gone (or, if encoding failed, the PCM kept and the close line
saying so).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("polyasr.archive")

UPLOADS = "http"
UPLOAD_AUDIO = "audio.flac"
UPLOAD_SIDECAR = "upload.json"
CONNECTIONS = "sessions"
EVENTS = "events.jsonl"
PCM = "input.pcm"
FLAC = "input.flac"
AUDIO_FORMAT = "audio_format"  # the events line naming a rate other than 16 kHz
FLAC_PARTIAL = "input.flac.partial"  # a FLAC being written: never taken for the final one
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def day_folder(root: Path, kind: str, now: datetime) -> Path:
    return root / kind / now.strftime("%Y-%m-%d")


def jsonable(value: Any) -> Any:
    """numpy scalars as numbers (callers pass measured durations), anything else as text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def event_line(t_ms: int, type: str, fields: dict[str, Any]) -> str:
    return json.dumps({"t_ms": t_ms, "type": type, **fields}, ensure_ascii=False, default=jsonable) + "\n"
