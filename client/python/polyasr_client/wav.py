"""PCM16 to WAV, so captured dictation audio can go to the batch endpoint."""

from __future__ import annotations

import io
import wave

from polyasr_client.framing import SAMPLE_RATE


def wav_from_pcm16(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A RIFF/WAVE file of mono 16-bit little-endian ``pcm``, unchanged."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()
