"""Both archives of one server, as the app builds them once: uploads, a connection archive
per dictation, recovery at start and retention on a timer.

Archiving is best effort: a full disk or a permission error is logged, counted in
``status`` and never fails a request or a dictation. Every write is checked against the
byte budget (``LOG_MAX_GB``, ``LOG_MIN_FREE_GB``) before it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path

from polyasr.archive.budget import DiskBudget
from polyasr.archive.connection import ConnectionArchive
from polyasr.archive.recovery import recover
from polyasr.archive.retention import archive_bytes, prune
from polyasr.archive.status import ArchiveStatus
from polyasr.archive.uploads import UploadArchive
from polyasr.archive.writer import WRITER
from polyasr.core.config import Settings
from polyasr.core.threads import BATCH

log = logging.getLogger("polyasr.archive")


PRUNE_INTERVAL_SEC = 3600.0


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
        self.status = ArchiveStatus()
        self.budget: DiskBudget | None = None
        if root is not None:
            self.budget = DiskBudget(root, self.max_bytes, settings.log_min_free_gb * 1e9, self.is_open)
        self.uploads = UploadArchive(
            root, backend=backend, model=model, budget=self.budget, status=self.status
        )
        self._open: dict[Path, ConnectionArchive] = {}
        self._open_lock = threading.Lock()
        self._timer: asyncio.Task[None] | None = None

    def new_connection(self) -> ConnectionArchive:
        """The archive of a newly accepted connection; its folder is safe from retention until closed."""
        archive = ConnectionArchive(
            self.root, self.backend, self.model, on_close=self._closed, budget=self.budget, status=self.status
        )
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
        await BATCH.run(recover, self.root, self.is_open)
        if self.max_age_days > 0 or self.max_bytes > 0:
            self._timer = asyncio.get_running_loop().create_task(self._prune_forever())

    async def prune(self) -> list[Path]:
        """Apply retention once, off the event loop; what was deleted."""
        if self.root is None:
            return []
        return await BATCH.run(self._prune)

    def _prune(self) -> list[Path]:
        assert self.root is not None and self.budget is not None
        deleted = prune(
            self.root, max_age_days=self.max_age_days, max_bytes=self.max_bytes, is_open=self.is_open
        )
        self.budget.measured(archive_bytes(self.root))
        return deleted

    async def close(self) -> None:
        """Stop retention, complete connections still open and let the writer finish."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        with self._open_lock:
            still_open = list(self._open.values())
        for archive in still_open:
            await BATCH.run(archive.close)
        if self.root is not None:
            await asyncio.to_thread(WRITER.call, lambda: None)

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
