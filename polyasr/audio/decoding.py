"""Audio decoding: any container PyAV reads → 16 kHz mono float32.

PyAV bundles FFmpeg's libraries, so wav, flac, mp3, ogg/opus, m4a/AAC and
webm decode without an ``ffmpeg`` binary on the host (qwen-asr's own file path
shells out to one; its base64 path reads only what libsndfile reads).

Decoding is a stream of small blocks with a running sample count, so a
duration cap stops it as soon as it is passed: a 1 MB FLAC of silence
decodes to hours of float32, and bytes alone do not bound memory. Long audio
is cut at quiet points as it is decoded (:func:`quiet_pieces`), so the model
can work on an upload's first piece while the rest is still being read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, BinaryIO

import av
import numpy as np

from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.threads import BATCH


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode, or hold no samples at all."""


class AudioTooLong(AudioDecodeError):
    """The decoded audio passes the duration cap (HTTP 413, ``audio_too_long``)."""

    def __init__(self, max_sec: float, what: str = "audio") -> None:
        super().__init__(f"{what} is longer than the {max_sec:g} s limit (POLYASR_MAX_AUDIO_SEC)")
        self.max_sec = max_sec


def _frames(container: Any) -> Iterator[Any]:
    """Every resampled frame of the first audio stream, the resampler's tail included."""
    if not container.streams.audio:
        raise AudioDecodeError("could not decode audio: the file has no audio stream")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    for frame in container.decode(container.streams.audio[0]):
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def decoded_blocks(source: BinaryIO | str, max_sec: float | None = None) -> Iterator[np.ndarray]:
    """``source`` as 16 kHz mono float32 blocks in [-1, 1], in order.

    Raises :class:`AudioTooLong` as soon as more than ``max_sec`` seconds have
    come out (nothing past the cap is decoded), :class:`AudioDecodeError` for
    bytes that are not audio or decode to no samples at all.
    """
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not decode audio: {exc}") from None
    limit = None if max_sec is None else int(max_sec * SAMPLE_RATE)
    total = 0
    try:
        for frame in _frames(container):
            block = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            total += len(block)
            if limit is not None and total > limit:
                raise AudioTooLong(float(max_sec or 0))
            yield block
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not decode audio: {exc}") from None
    finally:
        container.close()
    if total == 0:
        raise AudioDecodeError("audio is empty: the file decodes to no samples")


def decode_audio(source: BinaryIO | str, max_sec: float | None = None) -> np.ndarray:
    """Decode the first audio stream of ``source`` whole (see :func:`decoded_blocks`)."""
    return np.concatenate(list(decoded_blocks(source, max_sec)))


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


def quiet_pieces(
    blocks: Iterable[np.ndarray], max_sec: float, search_sec: float = 5.0
) -> Iterator[np.ndarray]:
    """Cut a stream of sample blocks into pieces of at most ``max_sec``, each
    cut at the quietest 20 ms frame of the last ``search_sec`` before the limit.

    Decoding a long upload as several pieces keeps each decode inside a sane
    token budget and lets the engine batch them; cutting where it is quiet
    avoids splitting a word. A piece is yielded as soon as the audio after its
    cut has arrived, so the cuts do not depend on how the stream is blocked.
    """
    limit = int(max_sec * SAMPLE_RATE)
    search = min(int(search_sec * SAMPLE_RATE), limit // 2)
    held: list[np.ndarray] = []
    count = 0
    for block in blocks:
        held.append(block)
        count += len(block)
        if count <= limit:
            continue
        rest = np.concatenate(held)
        while len(rest) > limit:
            cut = quietest_point(rest, limit - search, limit)
            yield rest[:cut]
            rest = rest[cut:]
        held, count = [rest], len(rest)
    if count:
        yield np.concatenate(held)


def split_at_quiet(samples: np.ndarray, max_sec: float, search_sec: float = 5.0) -> list[np.ndarray]:
    """:func:`quiet_pieces` of audio already in memory (always at least one piece)."""
    return list(quiet_pieces([samples], max_sec, search_sec)) or [samples]


class UploadAudio:
    """An upload decoded piece by piece on a worker thread, as the pieces are needed.

    Iterating yields :func:`quiet_pieces` of at most ``piece_sec``; decoding
    runs only while someone waits for the next piece, so a consumer that stops
    (a client that went away) stops the decoding too. With ``keep`` the pieces
    are kept for what needs the whole audio afterwards (forced alignment).
    """

    def __init__(self, source: BinaryIO | str, max_sec: float, piece_sec: float, keep: bool = False) -> None:
        self._pieces = quiet_pieces(decoded_blocks(source, max_sec), piece_sec)
        self._lock = threading.Lock()  # the generator runs on one thread at a time
        self._keep = keep
        self.kept: list[np.ndarray] = []
        self.sample_count = 0

    def _next(self) -> np.ndarray | None:
        with self._lock:
            return next(self._pieces, None)

    def _close(self) -> None:
        with self._lock:
            self._pieces.close()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        try:
            while (piece := await BATCH.run(self._next)) is not None:
                self.sample_count += len(piece)
                if self._keep:
                    self.kept.append(piece)
                yield piece
        finally:
            await asyncio.shield(BATCH.run(self._close))

    @property
    def seconds(self) -> float:
        return self.sample_count / SAMPLE_RATE

    def samples(self) -> np.ndarray:
        """The whole audio decoded so far (only when built with ``keep``)."""
        return np.concatenate(self.kept) if self.kept else np.zeros(0, np.float32)
