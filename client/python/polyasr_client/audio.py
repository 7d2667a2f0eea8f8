"""Audio files to what the dictation socket takes: 16 kHz mono PCM16LE.

The socket does no resampling (a wrong rate is rejected or garbles the
result), so every file is converted here, in any container PyAV decodes.
"""

from __future__ import annotations

from pathlib import Path

import av

from polyasr_client.framing import SAMPLE_RATE


class AudioFileError(ValueError):
    """The file is missing, or holds no decodable audio."""


def decode_pcm16(path: str | Path) -> bytes:
    """The first audio stream of ``path``, resampled and downmixed to 16 kHz
    mono signed 16-bit little-endian."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[bytes] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(_packed(out) for out in resampler.resample(frame))
        chunks.extend(_packed(out) for out in resampler.resample(None))
    except av.FFmpegError as exc:  # FFmpeg's words, without its error number
        raise AudioFileError(f"{path}: {exc.strerror or exc}") from exc
    return b"".join(chunks)


def _packed(frame: av.AudioFrame) -> bytes:
    """The frame's samples as little-endian bytes (its plane may be padded)."""
    return frame.to_ndarray().astype("<i2", copy=False).tobytes()
