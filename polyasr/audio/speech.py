"""Speech detection for streaming dictation: the energy
gate, the Silero VAD gate and the Resemblyzer main-speaker filter.

Models are loaded once per process and shared; whatever changes while a
session runs (Silero's recurrent state, the enrolled speaker) lives in small
per-session objects. Upstream shared one stateful Silero instance between all
connections and ran it on the event loop (wart 13), so concurrent sessions
corrupted each other's VAD state and blocked each other. Everything here is
synchronous and meant to run in worker threads (``asyncio.to_thread``).

The heavy libraries (torch, onnxruntime, librosa) are imported when a model is
first loaded, so importing this module for its constants stays cheap.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from polyasr.core.constants import SAMPLE_RATE, SUB_CHUNK, WINDOW_SAMPLES

SPEAKER_SIM_THRESHOLD = 0.70
EMBED_MAX_SEC = 6.0  # the part of a long chunk the speaker is judged on
MIN_EMBED_SEC = 1.0  # shorter audio gives embeddings too noisy to judge a speaker by
ENERGY_MEAN_MIN = 80  # int16 units
ENERGY_PEAK_MIN = 900  # int16 units

_INT16_SCALE = 32768.0


def passes_energy_gate(samples: np.ndarray) -> bool:
    """Whether a frame is loud enough to count as signal for partials.

    A cheap pre-filter in front of the VAD: mean |x| ≥ 80 or max |x| ≥ 900 in
    int16 units. ``samples`` is float32 in [-1, 1] (int16 / 32768).
    """
    if samples.size == 0:
        return False
    magnitude = np.abs(samples.astype(np.float32, copy=False)) * _INT16_SCALE
    return bool(magnitude.mean() >= ENERGY_MEAN_MIN or magnitude.max() >= ENERGY_PEAK_MIN)


class VadStream:
    """One session's Silero state; feed it the session's audio in order.

    Not thread-safe: one call at a time per stream (the session's own order
    guarantees that). Different streams may run concurrently.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def window_probs(self, samples: np.ndarray) -> list[float]:
        """Speech probability of each complete 160 ms window in ``samples``.

        A window's probability is the maximum over its five 512-sample
        sub-chunks, so a short burst of speech is not averaged away. State
        carries over between calls as in one continuous stream. A trailing
        part shorter than a window is not consumed: the caller keeps it and
        passes it again with the next audio.
        """
        import torch

        audio = np.ascontiguousarray(samples, dtype=np.float32)
        probs: list[float] = []
        for start in range(0, len(audio) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES):
            best = 0.0
            for offset in range(start, start + WINDOW_SAMPLES, SUB_CHUNK):
                chunk = torch.from_numpy(audio[offset : offset + SUB_CHUNK])
                best = max(best, float(self._model(chunk, SAMPLE_RATE).item()))
            probs.append(best)
        return probs


class Vad:
    """Silero VAD in ONNX form: one ``InferenceSession`` per process.

    ``InferenceSession.run`` is thread-safe, so every stream shares the
    session; only the small recurrent state is copied per stream.
    """

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self._model = load_silero_vad(onnx=True)

    def new_stream(self) -> VadStream:
        """A fresh stream: shares the ONNX session, owns its state and context."""
        model = copy.copy(self._model)
        model.reset_states()
        return VadStream(model)


T = TypeVar("T")


def _process_wide(factory: Callable[[], T]) -> Callable[[], T]:
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


class SpeakerFilter:
    """Resemblyzer speaker embeddings on the CPU.

    The encoder is small and the GPU belongs to the ASR model. Torch modules
    are not guaranteed thread-safe, so inference is serialized by a lock.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # webrtcvad (a Resemblyzer dependency) warns that pkg_resources is
            # deprecated on import: noise in the server log nobody can act on.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder(device="cpu", verbose=False)
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

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two embeddings."""
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


shared_vad = _process_wide(Vad)
shared_speaker_filter = _process_wide(SpeakerFilter)


@dataclass(frozen=True)
class SpeakerDecision:
    """Outcome of one chunk's speaker check.

    ``similarity`` is ``None`` when nothing was compared (no embedding, or
    this chunk enrolled the reference).
    """

    accepted: bool
    similarity: float | None
    enrolled: bool
    embedded: bool


class SpeakerGate:
    """One session's main-speaker filter.

    The first chunk that yields an embedding becomes the reference speaker for
    good: updating it would let a second voice drift the reference towards
    itself. Chunks too short to embed are accepted unchecked, because a wrong
    rejection loses the user's words while a wrong acceptance only adds some.
    """

    def __init__(self, speaker_filter: SpeakerFilter) -> None:
        self._filter = speaker_filter
        self.reference: np.ndarray | None = None

    def check(self, samples: np.ndarray) -> SpeakerDecision:
        embedding = self._filter.embed(samples)
        if embedding is None:
            return SpeakerDecision(accepted=True, similarity=None, enrolled=False, embedded=False)
        if self.reference is None:
            self.reference = embedding
            return SpeakerDecision(accepted=True, similarity=None, enrolled=True, embedded=True)
        sim = self._filter.similarity(self.reference, embedding)
        return SpeakerDecision(
            accepted=sim >= SPEAKER_SIM_THRESHOLD, similarity=sim, enrolled=False, embedded=True
        )
