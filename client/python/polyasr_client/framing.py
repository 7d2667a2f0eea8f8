"""BASR audio frames: the only binary message the dictation socket accepts.

The header is big-endian while the PCM payload is little-endian; keeping both
encodings here means no other module ever touches byte order.
"""

from __future__ import annotations

import struct

MAGIC = b"BASR"
FRAMING_VERSION = 1
FRAME_TYPE_AUDIO = 1
SAMPLE_RATE = 16_000
BYTES_PER_SECOND = 32_000  # 16 kHz x 16-bit x mono
FRAME_BYTES = 3_200  # 100 ms, what every client of the protocol sends

_HEADER = struct.Struct(">4sBBHQ")  # magic, version, type, reserved, seq
HEADER_SIZE = _HEADER.size  # 16


class FrameError(ValueError):
    """Bytes that are not a BASR v1 audio frame."""


def encode_frame(seq: int, pcm: bytes) -> bytes:
    """One binary message: the 16-byte header (reserved bytes zero) and ``pcm``."""
    if seq < 0:
        raise ValueError(f"seq must be >= 0, got {seq}")
    return _HEADER.pack(MAGIC, FRAMING_VERSION, FRAME_TYPE_AUDIO, 0, seq) + pcm


def decode_frame(data: bytes) -> tuple[int, bytes]:
    """``(seq, payload)``; the reserved bytes are ignored, as receivers must."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"frame shorter than the {HEADER_SIZE}-byte header")
    magic, version, frame_type, _reserved, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("frame magic is not BASR")
    if version != FRAMING_VERSION:
        raise FrameError(f"unsupported framing version {version}")
    if frame_type != FRAME_TYPE_AUDIO:
        raise FrameError(f"unsupported frame type {frame_type}")
    return seq, data[HEADER_SIZE:]
