"""Audio decoding: any container PyAV reads → 16 kHz mono float32.

PyAV bundles FFmpeg's libraries, so wav, flac, mp3, ogg/opus, m4a/AAC and
webm decode without an ``ffmpeg`` binary on the host (qwen-asr's own file path
shells out to one; its base64 path reads only what libsndfile reads).

Also here: where to cut long audio when there is no pause to cut at — the
quietest frame near a limit.
"""

from __future__ import annotations

from typing import BinaryIO

import av
import numpy as np

from polyasr_constants import SAMPLE_RATE


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode, or hold no samples at all."""


def decode_audio(source: BinaryIO | str) -> np.ndarray:
    """Decode the first audio stream of ``source`` to 16 kHz mono float32 in [-1, 1]."""
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not decode audio: {exc}") from None
    pieces: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise AudioDecodeError("could not decode audio: the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not decode audio: {exc}") from None
    finally:
        container.close()
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioDecodeError("audio is empty: the file decodes to no samples")
    return samples


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes → float32 samples in [-1, 1] (an odd last byte is ignored)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0


def quietest_point(samples: np.ndarray, lo: int, hi: int) -> int:
    """The middle of the quietest 20 ms frame of ``samples[lo:hi]`` (an index
    into ``samples``): where a cut is least likely to split a word when there
    is no pause to cut at."""
    frame = SAMPLE_RATE // 50
    window = samples[lo:hi]
    if len(window) < frame:
        return (lo + hi) // 2
    frames = window[: len(window) // frame * frame].reshape(-1, frame)
    energy = np.square(frames).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def split_at_quiet(samples: np.ndarray, max_sec: float, search_sec: float = 5.0) -> list[np.ndarray]:
    """Cut ``samples`` into pieces of at most ``max_sec``, each cut at the
    quietest 20 ms frame of the last ``search_sec`` before the limit.

    Decoding a long upload as several pieces keeps each decode inside a sane
    token budget and lets the engine batch them; cutting where it is quiet
    avoids splitting a word.
    """
    limit = int(max_sec * SAMPLE_RATE)
    if len(samples) <= limit:
        return [samples]
    search = min(int(search_sec * SAMPLE_RATE), limit // 2)
    pieces = []
    start = 0
    while len(samples) - start > limit:
        cut = quietest_point(samples, start + limit - search, start + limit)
        pieces.append(samples[start:cut])
        start = cut
    pieces.append(samples[start:])
    return pieces
