"""Resemblyzer voice embeddings: one encoder per process, for the dictation's
main-speaker filter and for diarization alike.

The encoder's weights ship inside the ``resemblyzer`` package, so nothing is
downloaded. It runs on the CPU: it is small, and the GPU belongs to the ASR
model. Torch modules are not guaranteed thread-safe, so inference is
serialized by a lock. The heavy imports happen when the encoder is loaded.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from polyasr.core.constants import SAMPLE_RATE

EMBED_MAX_SEC = 6.0  # the part of a long chunk the speaker is judged on
MIN_EMBED_SEC = 1.0  # shorter audio gives embeddings too noisy to judge a speaker by
# Resemblyzer's own partial utterance: 160 mel frames of 10 ms.
WINDOW_SEC = 1.6
# Loudness Resemblyzer's preprocessing brings quiet speech up to (never down).
TARGET_DBFS = -30
# Windows embedded in one forward pass: bounds the mel batch a long region builds.
WINDOWS_PER_PASS = 64

T = TypeVar("T")


def process_wide(factory: Callable[[], T]) -> Callable[[], T]:
    """``factory()`` built once per process, on first use, even from several threads."""
    lock = threading.Lock()
    made: list[T] = []

    def get() -> T:
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    get.__doc__ = f"The process-wide {factory.__name__}, loaded on first use."
    return get


@dataclass(frozen=True)
class Windows:
    """Embeddings of sliding windows over one stretch of audio: row ``i`` of
    ``embeddings`` (L2-normalized) covers ``starts[i]`` .. ``starts[i] + WINDOW_SEC``
    seconds from the stretch's start."""

    embeddings: np.ndarray  # (n, 256) float32
    starts: np.ndarray  # (n,) float64 seconds


class VoiceEncoder:
    """The Resemblyzer encoder, loaded once (see :data:`shared_voice_encoder`)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # webrtcvad (a Resemblyzer dependency) warns that pkg_resources is
            # deprecated on import: noise in the server log nobody can act on.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from resemblyzer import VoiceEncoder as Resemblyzer

        self._encoder = Resemblyzer(device="cpu", verbose=False)
        self._lock = threading.Lock()

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        """L2-normalized embedding of 16 kHz mono float32 audio, or ``None``
        when it (or what Resemblyzer's silence trimming leaves of it) is
        shorter than ``MIN_EMBED_SEC``."""
        from resemblyzer import preprocess_wav

        min_samples = int(MIN_EMBED_SEC * SAMPLE_RATE)
        if len(samples) < min_samples:
            return None
        wav = preprocess_wav(np.asarray(samples, dtype=np.float32), source_sr=SAMPLE_RATE)
        if len(wav) < min_samples:
            return None
        # A voice is identified well within a few seconds; embedding a long
        # chunk whole would make a stop's speaker check grow with its length.
        if len(wav) > EMBED_MAX_SEC * SAMPLE_RATE:
            middle = (len(wav) - int(EMBED_MAX_SEC * SAMPLE_RATE)) // 2
            wav = wav[middle : middle + int(EMBED_MAX_SEC * SAMPLE_RATE)]
        with self._lock:
            embedding = self._encoder.embed_utterance(wav)
        embedding = np.asarray(embedding, dtype=np.float32)
        return embedding / np.linalg.norm(embedding)

    def embed_windows(self, samples: np.ndarray, step_sec: float) -> Windows:
        """Embeddings of ``WINDOW_SEC`` windows every ``step_sec`` over
        ``samples`` (16 kHz mono float32), and one ending where it ends. The
        audio is not trimmed, so a window's time is where it lies in
        ``samples``; audio shorter than one window gets one window, padded
        with silence."""
        import torch
        from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

        wav = normalize_volume(np.asarray(samples, dtype=np.float32), TARGET_DBFS, increase_only=True)
        frame = SAMPLE_RATE // 100
        width = round(WINDOW_SEC * 100)
        wav = np.pad(wav, (0, max(0, width * frame - len(wav))))
        mel = wav_to_mel_spectrogram(wav)
        last = max(0, len(mel) - width)
        # Windows every step, and one ending at the end: none reaches past the audio.
        firsts = list(range(0, last + 1, max(1, round(step_sec * 100))))
        if firsts[-1] != last:
            firsts.append(last)
        rows = []
        for at in range(0, len(firsts), WINDOWS_PER_PASS):
            batch = np.stack([mel[i : i + width] for i in firsts[at : at + WINDOWS_PER_PASS]])
            with self._lock, torch.no_grad():
                rows.append(self._encoder(torch.from_numpy(batch)).numpy())
        starts = np.asarray(firsts, dtype=np.float64) / 100
        return Windows(np.concatenate(rows).astype(np.float32), starts)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two embeddings."""
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


shared_voice_encoder = process_wide(VoiceEncoder)
