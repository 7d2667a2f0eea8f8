"""The upload archive: what each batch request's audio decoded to, and a JSON sidecar
saying what was asked and answered.

The archive keeps what the server heard, not the bytes it was sent: the
upload is decoded again (as the request decoded it: 16 kHz mono) and kept as
lossless FLAC. A 21 MB WAV that is a padding chunk and one second of audio is
archived as one second of audio, and a file named ``x.json`` cannot land on
top of a sidecar: every upload gets its own folder, whatever its name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from polyasr.archive.budget import BUDGET_SPENT, DiskBudget
from polyasr.archive.layout import UPLOAD_AUDIO, UPLOAD_SIDECAR, UPLOADS, day_folder
from polyasr.archive.status import UPLOADS as UPLOAD_WRITES
from polyasr.archive.status import ArchiveStatus
from polyasr.audio.decoding import decoded_blocks
from polyasr.core.constants import BYTES_PER_SAMPLE, SAMPLE_RATE

log = logging.getLogger("polyasr.archive")


class ArchiveFull(Exception):
    """The byte budget refused the write (``LOG_MAX_GB`` or ``LOG_MIN_FREE_GB``)."""


class UploadArchive:
    """Successful batch uploads: ``http/<date>/HHMMSS-<8 hex>/`` holding ``audio.flac``
    and ``upload.json``."""

    def __init__(
        self,
        root: Path | None,
        *,
        backend: str,
        model: str,
        budget: DiskBudget | None = None,
        status: ArchiveStatus | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.model = model
        self.budget = budget
        self.status = status or ArchiveStatus()

    def record(self, upload: BinaryIO, filename: str, language: str | None, text: str) -> Path | None:
        """Archive one upload (blocking: decodes and encodes); returns the sidecar
        path, or ``None`` if archiving is off or the write failed (counted)."""
        if self.root is None:
            return None
        now = datetime.now()
        folder = day_folder(self.root, UPLOADS, now) / f"{now:%H%M%S}-{secrets.token_hex(4)}"
        try:
            folder.mkdir(parents=True)
            seconds = self._encode(upload, folder / UPLOAD_AUDIO)
            meta = {
                "timestamp": now.isoformat(timespec="seconds"),
                "filename": filename,
                "language": language,
                "model": self.model,
                "backend": self.backend,
                "text": text,
                "audio_file": UPLOAD_AUDIO,
                "duration_sec": round(seconds, 3),
            }
            body = json.dumps(meta, ensure_ascii=False, indent=2).encode()
            self._charge(len(body))
            sidecar = folder / UPLOAD_SIDECAR
            sidecar.write_bytes(body)
        except Exception as exc:  # noqa: BLE001 - best effort: counted, the answer still goes out
            _remove(folder)
            self.status.failed(UPLOAD_WRITES, exc, skipped=isinstance(exc, ArchiveFull))
            return None
        self.status.ok(UPLOAD_WRITES)
        return sidecar

    def _charge(self, size: int) -> None:
        if self.budget is not None and not self.budget.allow(size):
            raise ArchiveFull(BUDGET_SPENT)

    def _encode(self, upload: BinaryIO, path: Path) -> float:
        """The upload decoded block by block into ``path`` (FLAC, 16 kHz mono); its seconds.

        Each block is charged to the budget at its PCM16 size (a FLAC is
        never larger), before it is written.
        """
        upload.seek(0)
        samples = 0
        with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC") as out:
            for block in decoded_blocks(upload):
                self._charge(len(block) * BYTES_PER_SAMPLE)
                out.write(np.clip(block, -1.0, 1.0))
                samples += len(block)
        return samples / SAMPLE_RATE


def _remove(folder: Path) -> None:
    """Take back what a failed record left (best effort: the disk may be the problem)."""
    for name in (UPLOAD_AUDIO, UPLOAD_SIDECAR):
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError:
            log.debug("could not remove %s", folder / name)
    try:
        os.rmdir(folder)
    except OSError:
        log.debug("could not remove %s", folder)
