"""Encode test audio into real containers with PyAV (no binaries, no downloads)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np

DATA = Path(__file__).resolve().parent / "data"

# container format, codec, sample format, sample rate, layout, filename suffix.
# FFmpeg's own Vorbis encoder is experimental and stereo-only, which also
# gives the decoder a stereo input to fold down.
CONTAINERS: dict[str, tuple[str, str, str, int, str, str]] = {
    "wav": ("wav", "pcm_s16le", "s16", 16000, "mono", ".wav"),
    "flac": ("flac", "flac", "s16", 16000, "mono", ".flac"),
    "mp3": ("mp3", "libmp3lame", "fltp", 44100, "mono", ".mp3"),
    "ogg": ("ogg", "vorbis", "fltp", 44100, "stereo", ".ogg"),
    "opus": ("ogg", "libopus", "flt", 48000, "mono", ".opus"),
    "m4a": ("ipod", "aac", "fltp", 44100, "mono", ".m4a"),
    "webm": ("webm", "libopus", "flt", 48000, "mono", ".webm"),
}


def speech(name: str = "voice_a") -> np.ndarray:
    """A committed espeak-ng clip from tests/data as 16 kHz mono float32."""
    from polyasr.audio.decoding import decode_audio

    return decode_audio(str(DATA / f"{name}.wav"))


def encode(samples: np.ndarray, kind: str, rate_in: int = 16000) -> tuple[bytes, str]:
    """``samples`` (mono float32) encoded as ``kind``; returns (bytes, suffix)."""
    fmt, codec, sample_fmt, rate, layout, suffix = CONTAINERS[kind]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options={"strict": "experimental"})
        stream.layout = layout
        resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=rate)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate_in
        frames = resampler.resample(frame) + resampler.resample(None)
        for out in frames:
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue(), suffix


def wav_bytes(samples: np.ndarray) -> bytes:
    return encode(samples, "wav")[0]


def empty_wav() -> bytes:
    """A valid WAV header with no samples."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
    return buf.getvalue()
