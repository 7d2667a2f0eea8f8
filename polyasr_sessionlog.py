"""Archives of what clients sent (contract §9): the HTTP upload part.

Each successful batch upload is kept as its original bytes plus a JSON
sidecar under ``<LOG_DIR>/http/<date>/``. Archiving is best effort by design:
a full disk or a permission error is logged and never fails the request.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("polyasr.sessionlog")


class HttpArchive:
    """Writes ``<root>/http/YYYY-MM-DD/HHMMSS-<8 hex><suffix>`` and its ``.json``."""

    def __init__(self, root: Path | None, *, backend: str, model: str) -> None:
        self.root = root
        self.backend = backend
        self.model = model

    def record(self, upload: BinaryIO, filename: str, language: str | None, text: str) -> Path | None:
        """Archive one upload; returns the sidecar path, or ``None`` if disabled or failed."""
        if self.root is None:
            return None
        try:
            now = datetime.now()
            folder = self.root / "http" / now.strftime("%Y-%m-%d")
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
