"""The upload archive: each batch request's audio and a JSON sidecar saying what was asked
and answered.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from polyasr.archive.layout import UPLOADS, day_folder

log = logging.getLogger("polyasr.archive")


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
            folder = day_folder(self.root, UPLOADS, now)
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
