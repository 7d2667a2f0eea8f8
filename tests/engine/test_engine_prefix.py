"""Answer-prefix continuation in the engine of this run (tiny checkpoints).

A streaming partial feeds the previous hypothesis back as ``Clip.prefix``; the
engine keeps all but its last tokens as the start of the answer and generates
only the rest, within the clip's token budget. Random weights answer with
non-empty gibberish when the language is forced, which is all these checks need.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from polyasr.core.engine import ROLLBACK_TOKENS, Clip, Transcript
from tests.audio_util import speech

AUDIO = speech("voice_a")

LANGUAGE = "English"


@pytest.fixture
def loaded(make_settings: Any, make_engine: Any) -> tuple[Any, Any]:
    engine = make_engine(make_settings())
    return engine, engine.load("asr")


@pytest.fixture
def tokenizer(loaded: tuple[Any, Any], backend: str) -> Any:
    """The engine's own tokenizer (both spell ``encode``/``decode`` alike)."""
    model = loaded[1]
    return model.tokenizer if backend == "mlx" else model.processor.tokenizer


@pytest.fixture
def parse(backend: str) -> Any:
    """The backend library's own parser of a raw answer."""
    module = "mlx_qwen3_asr.tokenizer" if backend == "mlx" else "qwen_asr"
    return importlib.import_module(module).parse_asr_output


@pytest.fixture
def generated(loaded: tuple[Any, Any], backend: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tokens each decode generated, counted at the library's generate call.

    On MLX that is the engine's own greedy loop over the library's model.
    Re-encoding the new text cannot count them: the tiny vocabulary holds
    tokens its merges never build, so a word the model emits as two tokens
    re-encodes as several.
    """
    counts: list[int] = []
    if backend == "mlx":
        from polyasr.engines import mlx_decode

        real = mlx_decode.greedy

        def spy(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            counts.append(len(result.ids))
            return result

        monkeypatch.setattr(mlx_decode, "greedy", spy)
    else:
        model = loaded[1].model
        real = model.generate

        def spy(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            counts.append(out.sequences.shape[1] - kwargs["input_ids"].shape[1])
            return out

        monkeypatch.setattr(model, "generate", spy)
    return counts


def decode(loaded: tuple[Any, Any], prefix: str = "", budget: int = 64) -> Transcript:
    engine, model = loaded
    return engine.transcribe(model, [Clip(AUDIO, LANGUAGE, "", budget, prefix=prefix)])[0]


def test_decode_without_prefix_returns_the_raw_answer(loaded: tuple[Any, Any], parse: Any) -> None:
    result = decode(loaded)
    assert result.raw.strip()
    language, text = parse(result.raw, user_language=LANGUAGE)
    assert result.text == text.strip() != ""
    assert result.language == language == LANGUAGE


def test_prefix_keeps_all_but_its_last_tokens_and_caps_the_new_ones(
    loaded: tuple[Any, Any], tokenizer: Any, parse: Any, generated: list[int]
) -> None:
    previous = decode(loaded)
    ids = tokenizer.encode(previous.raw, add_special_tokens=False)
    assert len(ids) > ROLLBACK_TOKENS
    rolled = tokenizer.decode(ids[:-ROLLBACK_TOKENS], skip_special_tokens=False)
    budget = 4
    calls = len(generated)  # the first decode's, and its loop guard's retry if it looped

    result = decode(loaded, prefix=previous.raw, budget=budget)

    assert result.raw.startswith(rolled)
    assert len(generated) == calls + 1 and 0 < generated[-1] <= budget
    assert result.text == parse(result.raw, user_language=LANGUAGE)[1].strip()


def test_short_prefix_rolls_back_to_nothing(loaded: tuple[Any, Any], tokenizer: Any) -> None:
    previous = decode(loaded)
    ids = tokenizer.encode(previous.raw, add_special_tokens=False)
    short = tokenizer.decode(ids[:ROLLBACK_TOKENS], skip_special_tokens=False)
    assert 0 < len(tokenizer.encode(short, add_special_tokens=False)) <= ROLLBACK_TOKENS

    # Nothing is left of the prefix, so the prompt and the answer are those of a fresh decode.
    assert decode(loaded, prefix=short) == previous


def test_cut_inside_a_character_backs_off_to_its_start(
    loaded: tuple[Any, Any], tokenizer: Any, backend: str
) -> None:
    prefix = "otq é1234"  # é is two byte-level tokens here, the digits one each
    ids = tokenizer.encode(prefix, add_special_tokens=False)
    assert "\ufffd" in tokenizer.decode(ids[:-ROLLBACK_TOKENS])  # the plain cut would split é

    result = decode(loaded, prefix=prefix)

    assert result.raw.startswith("otq ") and "\ufffd" not in result.raw
