"""The diarization fields of a transcription form, checked as OpenAI checks them:
``known_speaker_names[]`` with ``known_speaker_references[]`` (data URLs of 2-10 s
of audio, at most four speakers), ``chunking_strategy`` (``auto`` or a server-VAD
object), and this service's own ``min_speakers`` / ``max_speakers`` hint.

Every mistake is a 400 with a sentence that names the field. The references
are decoded here (at most four times ten seconds of audio), before any
work on the upload starts.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fastapi import HTTPException

from polyasr.audio.decoding import AudioDecodeError, AudioTooLong, decode_audio
from polyasr.audio.speech import RegionRule
from polyasr.core.constants import SAMPLE_RATE
from polyasr.diarize.speakers import Bounds
from polyasr.diarize.turns import DiarizeOptions, Known

MAX_KNOWN_SPEAKERS = 4
REFERENCE_SEC = (2.0, 10.0)
# Encoders pad a little (an MP3 frame, an AAC priming delay): a reference cut
# to exactly ten seconds must not fail by a few milliseconds.
REFERENCE_SLACK_SEC = 0.1
MAX_NAME_CHARS = 64
MAX_SPEAKERS = 32
MAX_VAD_MS = 10_000
DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]+)*?);base64,(?P<data>.*)$", re.S)


def bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def reference_audio(index: int, url: str) -> np.ndarray:
    """The audio of one ``known_speaker_references[]`` entry: a base64 data
    URL of 2-10 s of audio in any format an upload may have."""
    what = f"known_speaker_references[{index}]"
    match = DATA_URL.match(url.strip())
    if match is None:
        raise bad(f"{what} must be a base64 data URL (data:audio/wav;base64,...)")
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{what} is not valid base64") from None
    low, high = REFERENCE_SEC
    try:
        samples = decode_audio(io.BytesIO(data), high + REFERENCE_SLACK_SEC, setting=what)
    except AudioTooLong:
        raise bad(f"{what} is longer than {high:g} seconds (references must be {low:g}-{high:g} s)") from None
    except AudioDecodeError as exc:
        raise bad(f"{what}: {exc}") from None
    if len(samples) < (low - REFERENCE_SLACK_SEC) * SAMPLE_RATE:
        seconds = len(samples) / SAMPLE_RATE
        raise bad(f"{what} is {seconds:.1f} s long; references must be {low:g}-{high:g} s")
    return samples


def known_speakers(names: Sequence[str], references: Sequence[str]) -> Known:
    """The named speakers, each with its decoded reference."""
    if len(names) != len(references):
        raise bad(
            f"known_speaker_names has {len(names)} entries and known_speaker_references "
            f"{len(references)}; give one reference per name"
        )
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise bad(f"at most {MAX_KNOWN_SPEAKERS} known speakers are supported, got {len(names)}")
    cleaned = tuple(name.strip() for name in names)
    for name in cleaned:
        if not name or len(name) > MAX_NAME_CHARS:
            raise bad(f"each known_speaker_names entry must be 1-{MAX_NAME_CHARS} characters")
    if len(set(cleaned)) != len(cleaned):
        raise bad("known_speaker_names must not repeat a name")
    return Known(cleaned, tuple(reference_audio(i, url) for i, url in enumerate(references)))


def _number(fields: Mapping[str, Any], name: str, low: float, high: float, whole: bool) -> Any:
    value = fields.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high or (whole and number != int(number)):
        kind = "an integer" if whole else "a number"
        raise bad(f"chunking_strategy.{name} must be {kind} from {low:g} to {high:g}")
    return int(number) if whole else number


def region_rule(form: Mapping[str, Any]) -> RegionRule:
    """How speech regions are found: ``chunking_strategy`` as ``auto`` (the
    defaults), a JSON object, or the bracketed fields the OpenAI SDKs send
    (``chunking_strategy[type]=server_vad``, …)."""
    raw = form.get("chunking_strategy")
    fields: dict[str, Any] = {
        key[len("chunking_strategy[") : -1]: value
        for key, value in form.items()
        if key.startswith("chunking_strategy[") and key.endswith("]")
    }
    if raw is not None and raw.strip().lower() == "auto" and not fields:
        return RegionRule()
    if raw is not None and not fields:
        try:
            fields = json.loads(raw)
        except ValueError:
            fields = None  # type: ignore[assignment]
        if not isinstance(fields, dict):
            raise bad('chunking_strategy must be "auto" or an object with type "server_vad"')
    if not fields:
        return RegionRule()
    if fields.get("type") != "server_vad":
        raise bad('chunking_strategy.type must be "server_vad"')
    unknown = set(fields) - {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
    if unknown:
        raise bad(f"chunking_strategy has unknown fields: {', '.join(sorted(unknown))}")
    default = RegionRule()
    threshold = _number(fields, "threshold", 0.0, 1.0, whole=False)
    pad = _number(fields, "prefix_padding_ms", 0, MAX_VAD_MS, whole=True)
    silence = _number(fields, "silence_duration_ms", 0, MAX_VAD_MS, whole=True)
    return RegionRule(
        threshold=default.threshold if threshold is None else threshold,
        silence_ms=default.silence_ms if silence is None else silence,
        pad_ms=default.pad_ms if pad is None else pad,
    )


def speaker_bounds(min_speakers: int | None, max_speakers: int | None) -> Bounds:
    for name, value in (("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        if value is not None and not 1 <= value <= MAX_SPEAKERS:
            raise bad(f"{name} must be from 1 to {MAX_SPEAKERS}")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise bad(f"min_speakers ({min_speakers}) is more than max_speakers ({max_speakers})")
    return Bounds(min_speakers, max_speakers)


def diarize_options(
    form: Mapping[str, Any],
    diarized: bool,
    names: Sequence[str],
    references: Sequence[str],
    bounds: Bounds,
) -> DiarizeOptions | None:
    """The options of a ``diarized_json`` request (``None`` for any other
    format, where the speaker fields are refused and the chunking is only checked)."""
    rule = region_rule(form)
    if not diarized:
        if names or references or bounds != Bounds():
            raise bad(
                "known_speaker_names, known_speaker_references, min_speakers and max_speakers "
                "need response_format diarized_json"
            )
        return None
    return DiarizeOptions(rule=rule, bounds=bounds, known=known_speakers(names, references))
