"""The alignment pipeline, where users of the original layout look for it.

Forced alignment turns audio, and optionally its transcript, into timed
sentences with per-word times: long audio is cut at pauses into chunks the
aligner accepts, a given transcript is shared out over them, aligner units are
matched back onto the text, raw times are clamped and made monotonic, and
words are grouped into sentences. The code lives in the :mod:`polyasr.align`
package (``pipeline``, ``chunks``, ``timing``, ``manifest``, ``languages``,
``data``, ``errors``); this module is its documented public face. Code inside
the service and the tests import from the defining modules.
"""

from __future__ import annotations

from polyasr.align.chunks import DEFAULT_CHUNK_SEC, MAX_CHUNK_SEC
from polyasr.align.data import AlignInput, Alignment, Segment
from polyasr.align.errors import (
    AlignEntryFailed,
    AlignValueError,
    ManifestError,
    ManifestForbidden,
    ManifestTooLarge,
)
from polyasr.align.manifest import ManifestEntry, check_manifest, load_manifest
from polyasr.align.pipeline import Aligner

__all__ = [
    "DEFAULT_CHUNK_SEC",
    "MAX_CHUNK_SEC",
    "AlignEntryFailed",
    "AlignInput",
    "AlignValueError",
    "Aligner",
    "Alignment",
    "ManifestEntry",
    "ManifestError",
    "ManifestForbidden",
    "ManifestTooLarge",
    "Segment",
    "check_manifest",
    "load_manifest",
]
