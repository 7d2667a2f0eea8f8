"""Energy gate, Silero VAD streams and the Resemblyzer main-speaker filter, on real speech.

``voice_a`` and ``voice_b`` are espeak-ng clips in different voices. ``voice_b``
is ``espeak-ng -v fr+f3 -p 99 -s 160`` reading English, resampled with
``sox in.wav -r 16000 -c 1 -b 16 voice_b.wav``: the plain English espeak
variants all sound alike to Resemblyzer (similarity 0.75–0.87 to ``voice_a``,
above the 0.70 threshold), this one does not.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from polyasr.audio.speech import (
    SPEAKER_SIM_THRESHOLD,
    SpeakerGate,
    passes_energy_gate,
    shared_vad,
)
from polyasr.audio.voice import MIN_EMBED_SEC, shared_voice_encoder
from polyasr.core.constants import COMMIT_SILENCE_WINDOWS, VAD_THRESHOLD, WINDOW_SAMPLES
from tests.audio_util import speech

RATE = 16000


def whole_windows(samples: np.ndarray) -> np.ndarray:
    return samples[: len(samples) // WINDOW_SAMPLES * WINDOW_SAMPLES]


def silence(windows: int) -> np.ndarray:
    return np.zeros(windows * WINDOW_SAMPLES, np.float32)


# --- energy gate -------------------------------------------------------------


def test_energy_gate() -> None:
    assert not passes_energy_gate(np.zeros(1600, np.float32))
    assert not passes_energy_gate(np.zeros(0, np.float32))
    assert not passes_energy_gate(np.full(1600, 70 / 32768, np.float32))
    assert passes_energy_gate(np.full(1600, 80 / 32768, np.float32))  # mean |x| ≥ 80
    click = np.zeros(1600, np.float32)
    click[10] = -900 / 32768
    assert passes_energy_gate(click)  # max |x| ≥ 900
    click[10] = -899 / 32768
    assert not passes_energy_gate(click)
    assert passes_energy_gate(speech("voice_a")[RATE : RATE + 1600])


# --- VAD ---------------------------------------------------------------------


def test_vad_finds_speech_and_measures_speed() -> None:
    audio = whole_windows(speech("voice_a"))
    stream = shared_vad().new_stream()
    began = time.perf_counter()
    probs = stream.window_probs(audio)
    per_window_ms = (time.perf_counter() - began) * 1000 / len(probs)
    print(f"VAD: {per_window_ms:.2f} ms per 160 ms window")
    assert len(probs) == len(audio) // WINDOW_SAMPLES
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert np.mean(np.array(probs) >= VAD_THRESHOLD) > 0.7


def test_vad_ignores_silence_and_low_noise() -> None:
    noise = (np.random.default_rng(0).standard_normal(2 * RATE) * 0.003).astype(np.float32)
    for quiet in (silence(12), whole_windows(noise)):
        probs = shared_vad().new_stream().window_probs(quiet)
        assert max(probs) < VAD_THRESHOLD, probs


def test_vad_sees_a_pause_between_utterances() -> None:
    first = whole_windows(speech("voice_a")[: 2 * RATE])
    second = whole_windows(speech("voice_b")[: 2 * RATE])
    pause = silence(COMMIT_SILENCE_WINDOWS)  # 640 ms
    probs = shared_vad().new_stream().window_probs(np.concatenate([first, pause, second]))
    is_speech = [p >= VAD_THRESHOLD for p in probs]
    n_first = len(first) // WINDOW_SAMPLES
    assert any(is_speech[:n_first]) and any(is_speech[n_first + COMMIT_SILENCE_WINDOWS :])
    assert not any(is_speech[n_first : n_first + COMMIT_SILENCE_WINDOWS])


def test_vad_keeps_a_trailing_partial_window_unconsumed() -> None:
    assert shared_vad().new_stream().window_probs(np.zeros(WINDOW_SAMPLES - 1, np.float32)) == []
    assert len(shared_vad().new_stream().window_probs(np.zeros(WINDOW_SAMPLES * 2 + 7, np.float32))) == 2


def split_windows(audio: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``audio`` as consecutive pieces of the given numbers of windows (rest in the last)."""
    pieces, start = [], 0
    for n in sizes:
        pieces.append(audio[start : start + n * WINDOW_SAMPLES])
        start += n * WINDOW_SAMPLES
    pieces.append(audio[start:])
    return pieces


def test_vad_streams_have_independent_state() -> None:
    """Two sessions interleaved give exactly what each gives alone."""
    a = whole_windows(speech("voice_a"))
    b = whole_windows(speech("voice_b"))
    vad = shared_vad()
    alone_a = vad.new_stream().window_probs(a)
    alone_b = vad.new_stream().window_probs(b)

    stream_a, stream_b = vad.new_stream(), vad.new_stream()
    got_a: list[float] = []
    got_b: list[float] = []
    pieces_a = split_windows(a, [1, 3, 2, 5, 1, 7])
    pieces_b = split_windows(b, [2, 1, 4, 1, 6, 3])
    for piece_a, piece_b in zip(pieces_a, pieces_b, strict=True):
        got_a += stream_a.window_probs(piece_a)
        got_b += stream_b.window_probs(piece_b)
    assert got_a == alone_a
    assert got_b == alone_b
    # the stream's state matters: the same audio on a stream that heard speech differs
    assert vad.new_stream().window_probs(a[WINDOW_SAMPLES:]) != alone_a[1:]


def test_vad_streams_in_parallel_threads() -> None:
    """The shared ONNX session serves concurrent streams (as from asyncio.to_thread)."""
    clips = [whole_windows(speech(name)) for name in ("voice_a", "voice_b", "voice_a", "voice_b")]
    vad = shared_vad()
    expected = [vad.new_stream().window_probs(clip) for clip in clips]
    results: list[list[float]] = [[] for _ in clips]

    def run(i: int) -> None:
        stream = vad.new_stream()
        for piece in split_windows(clips[i], [1] * (len(clips[i]) // WINDOW_SAMPLES)):
            results[i] += stream.window_probs(piece)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_shared_vad_is_loaded_once() -> None:
    assert shared_vad() is shared_vad()


# --- speaker filter ----------------------------------------------------------


@pytest.fixture(scope="module")
def voices() -> dict[str, np.ndarray]:
    a = speech("voice_a")
    b = speech("voice_b")
    half = len(a) // 2
    return {"a1": a[:half], "a2": a[half:], "b": b}


def test_same_voice_accepted_other_voice_rejected(voices: dict[str, np.ndarray]) -> None:
    gate = SpeakerGate(shared_voice_encoder())
    first = gate.check(voices["a1"])
    assert first.accepted and first.enrolled and first.embedded and first.similarity is None
    reference = gate.reference
    assert reference is not None
    assert np.linalg.norm(reference) == pytest.approx(1.0, abs=1e-5)

    same = gate.check(voices["a2"])
    other = gate.check(voices["b"])
    print(f"speaker similarity: same voice {same.similarity:.3f}, other voice {other.similarity:.3f}")
    assert same.embedded and not same.enrolled
    assert same.similarity is not None and same.similarity >= SPEAKER_SIM_THRESHOLD and same.accepted
    assert other.embedded and not other.enrolled
    assert other.similarity is not None and other.similarity < SPEAKER_SIM_THRESHOLD and not other.accepted
    assert gate.reference is reference  # never updated


def test_other_voice_enrolled_first_rejects_the_first_voice(voices: dict[str, np.ndarray]) -> None:
    gate = SpeakerGate(shared_voice_encoder())
    assert gate.check(voices["b"]).enrolled
    decision = gate.check(voices["a1"])
    assert decision.similarity is not None and not decision.accepted


def test_short_audio_is_accepted_unchecked(voices: dict[str, np.ndarray]) -> None:
    speaker_filter = shared_voice_encoder()
    short = voices["a1"][: int(0.9 * RATE)]
    assert speaker_filter.embed(short) is None
    # long enough, but silence trimming leaves less than MIN_EMBED_SEC of it
    padded = np.concatenate([short[: int(0.5 * RATE)], np.zeros(2 * RATE, np.float32)])
    assert len(padded) >= MIN_EMBED_SEC * RATE
    assert speaker_filter.embed(padded) is None

    gate = SpeakerGate(speaker_filter)
    decision = gate.check(short)
    assert decision.accepted and not decision.embedded and not decision.enrolled
    assert decision.similarity is None and gate.reference is None
    assert gate.check(voices["a1"]).enrolled  # the first *embeddable* chunk enrolls
    unchecked = gate.check(voices["b"][: int(0.5 * RATE)])
    assert unchecked.accepted and unchecked.similarity is None


def test_similarity_is_cosine() -> None:
    similarity = shared_voice_encoder().similarity
    assert similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(2**-0.5)
