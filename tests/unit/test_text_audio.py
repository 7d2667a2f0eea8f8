"""Pure helpers: the CJK-aware join rule, audio decoding and quiet-point splits."""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest

from polyasr.audio.decoding import AudioDecodeError, decode_audio, split_at_quiet
from polyasr.core.text import join_text, join_texts
from tests.audio_util import CONTAINERS, empty_wav, encode, speech, wav_bytes


@pytest.mark.parametrize(
    ("left", "right", "joined"),
    [
        ("你好", "世界", "你好世界"),
        ("こんにちは", "世界", "こんにちは世界"),
        ("hello", "world", "hello world"),
        ("你好", "world", "你好 world"),
        (" hello ", "", "hello"),
        ("", " 世界", "世界"),
        ("안녕", "하세요", "안녕하세요"),
    ],
)
def test_join_rule(left: str, right: str, joined: str) -> None:
    assert join_text(left, right) == joined


def test_join_texts_folds_in_order() -> None:
    assert join_texts(["one", "", "two", "三", "四"]) == "one two 三四"


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_decode_every_container_to_16k_mono(kind: str) -> None:
    clip = speech()
    data, _ = encode(clip, kind)
    decoded = decode_audio(io.BytesIO(data))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(clip)) < 0.1 * 16000
    assert 0.3 < float(np.abs(decoded).max()) <= 1.0


def test_decode_rejects_garbage_and_empty() -> None:
    with pytest.raises(AudioDecodeError, match="not an audio file"):
        decode_audio(io.BytesIO(b"definitely not audio" * 50))
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(io.BytesIO(empty_wav()))


def test_decode_says_what_is_wrong_with_a_file() -> None:
    header = bytearray(wav_bytes(np.zeros(1600, np.float32)))
    struct.pack_into("<II", header, 24, 2_000_000_000, 4_000_000_000)  # sample rate, byte rate
    cases = {
        b"": "the file is empty",
        b"some notes, not audio\n" * 20: "not an audio file the server can read",
        random.Random(7).randbytes(5000): "not an audio file the server can read",
        bytes(header): "sample rate 2000000000 Hz is not supported",
    }
    for data, reason in cases.items():
        with pytest.raises(AudioDecodeError) as caught:
            decode_audio(io.BytesIO(data))
        assert str(caught.value).startswith(reason) and "Errno" not in str(caught.value)


def test_split_at_quiet_cuts_in_silence() -> None:
    rng = np.random.default_rng(0)
    loud = rng.uniform(-0.5, 0.5, 16000 * 40).astype(np.float32)
    loud[16000 * 27 : 16000 * 27 + 3200] = 0.0  # a 200 ms pause inside the search window
    pieces = split_at_quiet(loud, max_sec=30.0)
    assert len(pieces) == 2
    assert sum(len(p) for p in pieces) == len(loud)
    cut = len(pieces[0])
    assert 16000 * 27 <= cut <= 16000 * 27 + 3200
    assert split_at_quiet(loud[:16000], 30.0)[0] is not None and len(split_at_quiet(loud[:16000], 30.0)) == 1


def test_split_at_quiet_bounds_every_piece() -> None:
    audio = np.ones(16000 * 100, np.float32) * 0.1
    pieces = split_at_quiet(audio, max_sec=30.0)
    assert all(len(p) <= 30 * 16000 for p in pieces)
    assert np.concatenate(pieces).shape == audio.shape
