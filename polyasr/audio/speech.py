"""Speech detection: the energy gate, Silero VAD (streams for dictation,
speech regions for whole uploads) and the Resemblyzer main-speaker filter.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyasr.audio.voice import VoiceEncoder, process_wide
from polyasr.core.constants import SAMPLE_RATE, SUB_CHUNK, WINDOW_SAMPLES

SPEAKER_SIM_THRESHOLD = 0.70
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
        return VadStream(self._fresh())

    def _fresh(self) -> Any:
        model = copy.copy(self._model)
        model.reset_states()
        return model

    def speech_regions(self, samples: np.ndarray, rule: RegionRule) -> list[tuple[int, int]]:
        """``(start, end)`` sample ranges of speech in ``samples`` (16 kHz mono
        float32) by Silero's own offline rule, with a fresh state: a region
        ends after ``rule.silence_ms`` of quiet, is padded by ``rule.pad_ms``
        on both sides, and is cut (at its longest pause) before ``rule.max_sec``."""
        import torch
        from silero_vad import get_speech_timestamps

        found = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
            self._fresh(),
            threshold=rule.threshold,
            sampling_rate=SAMPLE_RATE,
            max_speech_duration_s=rule.max_sec,
            min_silence_duration_ms=rule.silence_ms,
            speech_pad_ms=rule.pad_ms,
        )
        return [(int(r["start"]), int(r["end"])) for r in found]


@dataclass(frozen=True)
class RegionRule:
    """How Silero's offline rule turns speech probabilities into regions."""

    threshold: float = 0.5
    silence_ms: int = 300
    pad_ms: int = 30
    max_sec: float = 30.0


shared_vad = process_wide(Vad)


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

    def __init__(self, speaker_filter: VoiceEncoder) -> None:
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
