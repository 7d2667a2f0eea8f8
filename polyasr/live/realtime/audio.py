"""Input audio of an OpenAI Realtime session: appended chunks in the
session's format → PCM16 for the archive and float32 at the pipeline's 16 kHz.

The formats are the ones the openai SDK types: ``audio/pcm`` (16-bit
little-endian mono; OpenAI's rate is 24 kHz, and we take 16 kHz too) and
``audio/pcmu`` / ``audio/pcma`` (G.711 μ-law / A-law at 8 kHz, what telephony
bridges send). G.711 is expanded by FFmpeg's decoders and every rate other
than 16 kHz goes through one libswresample resampler per connection (PyAV),
so the audio is resampled once, as one continuous stream: chunk boundaries
are invisible to the filter, and a client may split its audio anywhere (an
odd trailing byte of PCM waits for the next chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from polyasr.core.constants import SAMPLE_RATE

PCM = "audio/pcm"
PCMU = "audio/pcmu"
PCMA = "audio/pcma"
PCM_RATES = (24_000, 16_000)
G711_RATE = 8_000
_G711_CODECS = {PCMU: "pcm_mulaw", PCMA: "pcm_alaw"}


class UnsupportedFormat(ValueError):
    """A format this server does not take (the message says which it does)."""


@dataclass(frozen=True)
class AudioFormat:
    """One of the Realtime input formats, with its sample rate."""

    type: str = PCM
    rate: int = PCM_RATES[0]

    def as_dict(self) -> dict[str, Any]:
        """The format as the SDK types it (G.711 carries no rate field)."""
        return {"type": self.type, "rate": self.rate} if self.type == PCM else {"type": self.type}


def parse_format(value: Any) -> AudioFormat:
    """``session.audio.input.format`` → :class:`AudioFormat`, or :class:`UnsupportedFormat`."""
    if not isinstance(value, dict):
        raise UnsupportedFormat("format must be an object such as {'type': 'audio/pcm', 'rate': 24000}")
    kind = value.get("type", PCM)
    if kind == PCM:
        rate = value.get("rate", PCM_RATES[0])
        if rate not in PCM_RATES or isinstance(rate, bool):
            raise UnsupportedFormat(f"audio/pcm rate {rate!r} is not supported; use 24000 or 16000")
        return AudioFormat(PCM, int(rate))
    if kind in _G711_CODECS:
        return AudioFormat(kind, G711_RATE)
    supported = ", ".join((PCM, PCMU, PCMA))
    raise UnsupportedFormat(f"audio format {kind!r} is not supported; use one of {supported}")


class InputAudio:
    """One connection's input stream: decoder, carried byte, resampler."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._carry = b""  # an odd trailing PCM byte, completed by the next chunk
        self._g711 = self._new_g711() if fmt.type in _G711_CODECS else None
        self._resampler = self._new_resampler()

    def _new_g711(self) -> av.AudioCodecContext:
        codec = av.CodecContext.create(_G711_CODECS[self.format.type], "r")
        codec.sample_rate = G711_RATE
        codec.layout = "mono"
        return codec

    def _new_resampler(self) -> av.AudioResampler | None:
        if self.format.rate == SAMPLE_RATE:
            return None
        return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def decode(self, payload: bytes) -> tuple[bytes, np.ndarray]:
        """One appended chunk → (its PCM16 at the input rate, float32 at 16 kHz).

        The PCM16 is exactly the audio the client appended (for G.711, its
        lossless expansion), which is what the archive keeps."""
        pcm = self._to_pcm16(payload)
        if not pcm:
            return b"", np.zeros(0, np.float32)
        ints = np.frombuffer(pcm, dtype="<i2")
        if self._resampler is None:
            return pcm, ints.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(ints.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.format.rate
        return pcm, self._samples(self._resampler.resample(frame))

    def _to_pcm16(self, payload: bytes) -> bytes:
        if self._g711 is not None:
            frames = self._g711.decode(av.Packet(payload)) if payload else []
            return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in frames)
        data = self._carry + payload
        whole = len(data) // 2 * 2
        self._carry = data[whole:]
        return data[:whole]

    def flush(self) -> np.ndarray:
        """What the resampler still holds (a turn ends here); it starts afresh after."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        held = self._samples(self._resampler.resample(None))
        self._resampler = self._new_resampler()
        return held

    @staticmethod
    def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32)
