"""The JSON control messages a client sends, and the v2 coverage rule.

Field names are the wire contract's; building them in one place keeps the
start, a resume and a reissued stop byte-identical in what they claim.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from polyasr_client.framing import SAMPLE_RATE

PROTOCOL = 1  # framing/message family; the same for control v1 and v2
CONTROL = 2  # the control protocol this client speaks (coverage proofs)
DEFAULT_URL = "http://127.0.0.1:8766"
WS_PATH = "/ws/transcribe"
API_KEY_ENV = "POLYASR_API_KEY"


def api_key_or_env(api_key: str | None) -> str | None:
    """The key given, else ``$POLYASR_API_KEY``; empty means none."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return key or None


def opening_message(
    kind: Literal["start", "resume"],
    session_id: str,
    *,
    language: str | None = None,
    context: str | None = None,
    words: bool = False,
    confidence: bool = False,
) -> dict[str, Any]:
    """``start`` or ``resume``. Both restate language, context, words and
    confidence: a server that lost the session creates a fresh one from the
    resume alone (one that still holds it keeps the start's choices)."""
    message: dict[str, Any] = {
        "type": kind,
        "protocol": PROTOCOL,
        "control": CONTROL,
        "sessionId": session_id,
        "sampleRate": SAMPLE_RATE,
        "channels": 1,
        "encoding": "pcm16le",
    }
    if language:
        message["language"] = language
    if context:
        message["context"] = context
    if words:
        message["words"] = True
    if confidence:
        message["confidence"] = True
    return message


def stop_message(session_id: str, stop_id: str, final_captured_seq: int) -> dict[str, Any]:
    """``stop`` with the coverage claim: frames ``0..final_captured_seq-1``
    are the utterance. A reconnect reissues it unchanged (same ``stopId``)."""
    return {
        "type": "stop",
        "protocol": PROTOCOL,
        "sessionId": session_id,
        "stopId": stop_id,
        "finalCapturedSeq": final_captured_seq,
    }


def covers(final: dict[str, Any], final_captured_seq: int) -> bool:
    """The v2 client rule: a ``final`` proves it recognized the utterance iff
    ``recognizedThroughSeq`` is present and reaches ``final_captured_seq``."""
    through = final.get("recognizedThroughSeq")
    if not isinstance(through, int) or isinstance(through, bool):
        return False
    return through >= final_captured_seq


def websocket_url(base_url: str) -> str:
    """``http(s)://host:port[/prefix]`` → ``ws(s)://host:port[/prefix]/ws/transcribe``.
    The base is an HTTP URL because the batch fallback needs one too."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    path = parts.path.rstrip("/") + WS_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))
