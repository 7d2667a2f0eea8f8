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
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, BinaryIO

import av
import numpy as np

from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.threads import BATCH

# Input sample rates the resampler is given: telephone-band and up to what
# studio converters record. A header claiming anything else is a broken or
# hostile file (2 GHz "audio" resamples to nothing, 1 Hz to hours).
MIN_INPUT_RATE = 1_000
MAX_INPUT_RATE = 768_000
NOT_AUDIO = "not an audio file the server can read (wav, flac, mp3, ogg, opus, m4a, webm, ...)"
# The demuxers an upload or a manifest file may open: plain audio and media
# files. Playlists and their kin (hls, concat, dash, …) open other files and
# URLs named inside them, so FFmpeg refuses every format not listed here.
PLAIN_AUDIO_DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,mp4,m4a,matroska,webm,aac,aiff,caf,wv,ape,tta,amr,au,"
    "asf,avi,flv,mpegts,mpeg,ac3,eac3,dts,truehd,mlp,dsf,voc,gsm,g722"
)


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode, or hold no samples at all; the
    message says which in words for the person who sent the file."""


class AudioTooLong(AudioDecodeError):
    """The decoded audio passes the duration cap (HTTP 413, ``audio_too_long``)."""

    def __init__(self, max_sec: float, what: str = "audio", setting: str = "POLYASR_MAX_AUDIO_SEC") -> None:
        super().__init__(f"{what} is longer than the {max_sec:g} s limit ({setting})")
        self.max_sec = max_sec


def _is_empty(source: BinaryIO | str) -> bool:
    """Whether ``source`` has no bytes left to read (what cannot be measured
    is left to the demuxer to judge)."""
    try:
        if isinstance(source, str):
            return os.path.getsize(source) == 0
        here = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(here)
    except (OSError, ValueError):
        return False
    return end <= here


def _open(source: BinaryIO | str) -> Any:
    """The container of ``source``, or an :class:`AudioDecodeError` that says
    why it is not one: empty, or not a format FFmpeg recognizes."""
    if _is_empty(source):
        raise AudioDecodeError("the file is empty")
    try:
        return av.open(source, mode="r", options={"format_whitelist": PLAIN_AUDIO_DEMUXERS})
    except av.error.InvalidDataError:
        raise AudioDecodeError(NOT_AUDIO) from None
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"the file could not be opened as audio: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for a failure, without its error number and file name."""
    return str(getattr(exc, "strerror", None) or exc)


def _frames(container: Any) -> Iterator[Any]:
    """Every resampled frame of the first audio stream, the resampler's tail included."""
    if not container.streams.audio:
        raise AudioDecodeError("the file has no audio track")
    rate = container.streams.audio[0].codec_context.sample_rate
    if rate and not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioDecodeError(
            f"sample rate {rate} Hz is not supported ({MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz are)"
        )
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    for frame in container.decode(container.streams.audio[0]):
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def decoded_blocks(
    source: BinaryIO | str, max_sec: float | None = None, setting: str = "POLYASR_MAX_AUDIO_SEC"
) -> Iterator[np.ndarray]:
    """``source`` as 16 kHz mono float32 blocks in [-1, 1], in order.

    Raises :class:`AudioTooLong` (naming ``setting``) as soon as more than
    ``max_sec`` seconds have come out (nothing past the cap is decoded),
    :class:`AudioDecodeError` for an empty file, bytes that are not audio (or
    a container that is not plain audio, such as a playlist), a sample rate
    outside ``MIN_INPUT_RATE``..``MAX_INPUT_RATE``, damaged data, or no
    samples at all.
    """
    container = _open(source)
    limit = None if max_sec is None else int(max_sec * SAMPLE_RATE)
    total = 0
    try:
        for frame in _frames(container):
            block = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            total += len(block)
            if limit is not None and total > limit:
                raise AudioTooLong(float(max_sec or 0), setting=setting)
            yield block
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        where = f" after {total / SAMPLE_RATE:.1f} s" if total else ""
        raise AudioDecodeError(
            f"the audio is damaged and could not be decoded{where}: {_reason(exc)}"
        ) from None
    finally:
        container.close()
    if total == 0:
        raise AudioDecodeError("audio is empty: the file holds no audio samples")


def decode_audio(
    source: BinaryIO | str,
    max_sec: float | None = None,
    charge: Callable[[int], None] | None = None,
    setting: str = "POLYASR_MAX_AUDIO_SEC",
) -> np.ndarray:
    """Decode the first audio stream of ``source`` whole (see :func:`decoded_blocks`),
    telling ``charge`` the bytes of each block before it is kept."""
    blocks = []
    for block in decoded_blocks(source, max_sec, setting):
        if charge is not None:
            charge(block.nbytes)
        blocks.append(block)
    return np.concatenate(blocks)


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
    ``charge`` is told the bytes of each piece as it is cut; ``setting`` names
    where ``max_sec`` comes from in the refusal.
    """

    def __init__(
        self,
        source: BinaryIO | str,
        max_sec: float,
        piece_sec: float,
        keep: bool = False,
        charge: Callable[[int], None] | None = None,
        setting: str = "POLYASR_MAX_AUDIO_SEC",
    ) -> None:
        self._pieces = quiet_pieces(decoded_blocks(source, max_sec, setting), piece_sec)
        self._lock = threading.Lock()  # the generator runs on one thread at a time
        self._keep = keep
        self._charge = charge
        self.kept: list[np.ndarray] = []
        self.sample_count = 0

    def _next(self) -> np.ndarray | None:
        with self._lock:
            piece = next(self._pieces, None)
        if piece is not None and self._charge is not None:
            self._charge(piece.nbytes)
        return piece

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
