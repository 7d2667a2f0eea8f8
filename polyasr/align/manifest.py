"""Manifest entries: checked against the allowed roots before any audio is read, then
decoded, all of them, before alignment starts.

A manifest is one alignment request, so its entries together stay within the
alignment's duration cap, and their number is capped before anything is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyasr.align.data import AlignInput
from polyasr.align.errors import AlignValueError, ManifestError, ManifestForbidden, ManifestTooLarge
from polyasr.audio.decoding import AudioDecodeError, AudioTooLong, decode_audio
from polyasr.core.constants import SAMPLE_RATE

# The setting that caps a manifest's decoded audio in all, named in its refusal.
TOTAL_LIMIT = "POLYASR_MAX_ALIGN_SEC"


@dataclass(frozen=True)
class ManifestEntry:
    path: Path  # resolved
    offset: float
    name: str  # the entry's id, else its index
    text: str | None = None

    @property
    def label(self) -> str:
        return f"manifest entry {self.name} ({self.path})"


def _entry(index: int, item: Any) -> tuple[str, str, float, str | None]:
    """``(name, path, offset, text)`` of one raw entry, or the error it deserves."""
    if not isinstance(item, dict) or not item.get("path"):
        raise ManifestError(f"manifest entry {index} missing 'path'")
    name = str(item["id"]) if item.get("id") is not None else str(index)
    path, offset, text = item["path"], item.get("offset", 0.0), item.get("text")
    if not isinstance(path, str):
        raise AlignValueError(f"manifest entry {name}: 'path' must be a string")
    if "\0" in path:
        raise ManifestError(f"manifest entry {name}: 'path' contains a NUL character")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        raise AlignValueError(f"manifest entry {name}: 'offset' must be a number of seconds")
    if offset < 0:
        raise AlignValueError(f"manifest entry {name}: 'offset' must not be negative")
    if text is not None and not isinstance(text, str):
        raise AlignValueError(f"manifest entry {name}: 'text' must be a string")
    return name, path, float(offset), (text.strip() or None) if text else None


def check_manifest(
    raw: Any, roots: tuple[Path, ...] | None, loopback: bool, max_entries: int | None = None
) -> list[ManifestEntry]:
    """Validate every entry before any work: shape and number (400/413/422),
    then who may read what (403), then existence (400).

    Paths are resolved (symlinks, ``..``) and must lie under one of
    ``roots``; with no roots configured (``None``) only loopback clients may
    use manifests, with any absolute path. The permission check comes before
    the existence check, so a client cannot probe for files it may not read.
    """
    if not isinstance(raw, list) or not raw:
        raise ManifestError("manifest must be a non-empty array")
    if max_entries is not None and len(raw) > max_entries:
        raise ManifestTooLarge(
            f"manifest has {len(raw)} entries; at most {max_entries} are accepted "
            "(POLYASR_MAX_MANIFEST_ENTRIES)"
        )
    parsed = [_entry(index, item) for index, item in enumerate(raw)]
    if roots is None and not loopback:
        raise ManifestForbidden(
            "manifest paths are accepted only from loopback clients unless "
            "POLYASR_MANIFEST_ROOTS names the directories they may come from"
        )
    entries = []
    for name, raw_path, offset, text in parsed:
        path = Path(raw_path)
        if not path.is_absolute():
            raise ManifestError(f"manifest entry {name} path must be absolute: {raw_path}")
        resolved = path.resolve()
        if roots is not None and not any(resolved.is_relative_to(root) for root in roots):
            raise ManifestForbidden(f"manifest entry {name} path is outside POLYASR_MANIFEST_ROOTS")
        entries.append(ManifestEntry(resolved, offset, name, text))
    for entry, (_, raw_path, _, _) in zip(entries, parsed, strict=True):
        if not entry.path.is_file():
            raise ManifestError(f"manifest entry {entry.name} path not found: {raw_path}")
    return entries


def load_manifest(
    entries: Sequence[ManifestEntry],
    max_sec: float | None = None,
    charge: Callable[[int], None] | None = None,
    max_total_sec: float | None = None,
) -> list[AlignInput]:
    """Decode every entry (all of them, before any alignment starts): each
    within ``max_sec`` seconds, all of them within ``max_total_sec``.
    ``charge`` is told the bytes of each decoded block (the process's budget
    for decoded audio)."""
    inputs = []
    heard = 0.0
    for entry in entries:
        cap, setting = max_sec, "POLYASR_MAX_AUDIO_SEC"
        if max_total_sec is not None and (cap is None or max_total_sec - heard < cap):
            cap, setting = max_total_sec - heard, TOTAL_LIMIT
        try:
            samples = decode_audio(str(entry.path), cap, charge, setting)
        except AudioTooLong as exc:
            if setting == TOTAL_LIMIT:
                raise AudioTooLong(float(max_total_sec or 0), "the manifest's audio", TOTAL_LIMIT) from None
            raise AudioTooLong(exc.max_sec, f"manifest entry {entry.name}") from None
        except AudioDecodeError as exc:
            raise AudioDecodeError(f"manifest entry {entry.name}: {exc}") from None
        heard += len(samples) / SAMPLE_RATE
        inputs.append(AlignInput(samples, entry.text, entry.offset, entry.label))
    return inputs
