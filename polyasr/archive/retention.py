"""Retention: archived items older than ``LOG_RETENTION_DAYS`` or beyond ``LOG_MAX_GB``
go, oldest first; folders of open connections are never touched.

An item is a connection folder, an upload's folder, or (as older versions
archived them) an upload file and its sidecar side by side.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from polyasr.archive.layout import CONNECTIONS, DAY, UPLOADS

log = logging.getLogger("polyasr.archive")


@dataclass
class _Item:
    """One thing retention deletes whole: a connection folder, or an upload and its sidecar."""

    key: Path  # the folder, or a flat upload's path without suffix
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


def _days(root: Path) -> Iterator[Path]:
    for kind in (UPLOADS, CONNECTIONS):
        base = root / kind
        if base.is_dir():
            yield from (day for day in base.iterdir() if day.is_dir() and DAY.fullmatch(day.name))


def _items(root: Path) -> Iterator[_Item]:
    for day in _days(root):
        flat: dict[str, list[Path]] = {}  # uploads archived as files beside their sidecar
        for path in day.iterdir():
            if not path.is_dir():
                flat.setdefault(path.name.split(".", 1)[0], []).append(path)
                continue
            try:
                files = [path, *path.iterdir()]
            except OSError:  # deleted meanwhile, or unreadable: not ours to count
                continue
            yield _Item(path, [path], *_stat_sum(files))
        for stem, paths in flat.items():
            yield _Item(day / stem, paths, *_stat_sum(paths))


def archive_bytes(root: Path) -> int:
    """What the archived items under ``root`` hold, in bytes (blocking)."""
    return sum(item.size for item in _items(root))


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
    free_bytes: float = 0,
) -> list[Path]:
    """Delete archived uploads and connection folders, oldest first (blocking).

    An item goes when it is older than ``max_age_days`` (by modification
    time), while both archives together exceed ``max_bytes``, or until
    ``free_bytes`` have been deleted; ``0`` disables each rule. The folder of
    an open connection is never deleted. Only date folders under ``http/``
    and ``sessions/`` are looked at.
    """
    items = sorted(_items(root), key=lambda item: item.mtime)
    total = sum(item.size for item in items)
    cutoff = time.time() - max_age_days * 86400 if max_age_days > 0 else None
    deleted = []
    freed = 0
    for item in items:
        too_old = cutoff is not None and item.mtime < cutoff
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big or freed < free_bytes):
            break  # sorted oldest first: nothing later is due either
        if is_open(item.key):
            continue
        try:
            _delete(item)
        except OSError:
            log.warning("could not delete the archive %s", item.key, exc_info=True)
            continue
        total -= item.size
        freed += item.size
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
            if day.is_dir() and DAY.fullmatch(day.name) and day.name != today:
                with contextlib.suppress(OSError):
                    day.rmdir()  # fails, harmlessly, unless empty
