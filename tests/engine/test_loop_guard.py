"""The engine of this run on scripted checkpoints: token scores, the
repetition-loop guard and the shared answer parser, end to end through the
real loaders and decode paths.

``tests.fixtures.tiny_models.build_scripted_asr`` writes checkpoints whose
greedy decode is known: one that cycles ``ok go up`` forever (and, with that
cycle banned, says ``ok go up no`` and ends), one that falls into another
cycle when the first is banned, and one that writes Qwen3-ASR's format
markers into its answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from polyasr.core.config import load_settings
from polyasr.core.engine import Clip, Transcript
from polyasr.core.loops import find_loop
from tests.audio_util import speech
from tests.conftest import engine_class, tiny_env
from tests.fixtures.tiny_models import (
    LOOP_ONCE,
    LOOP_RETRIED,
    SCRIPTED_TEXT,
    TinyModels,
    build_scripted_asr,
)

AUDIO = speech("voice_a")[:32_000]
BUDGET = 60  # room for the rule to see ``ok go up`` loop (11 turns, 33 tokens)
#: RMSNorm turns a unit embedding into sqrt(hidden) times it; the checkpoint's
#: head rows are 30 (the cycle) and 10 (its second choice) along it.
SECOND_CHOICE_LOGPROB = -(30 - 10) * math.sqrt(32)


def _engine(backend: str, models: TinyModels, **env: str) -> tuple[Any, Any]:
    settings = load_settings(backend, tiny_env(models, POLYASR_LOG_DIR="", **env))
    engine = engine_class(backend)(settings)
    return engine, engine.load("asr")


@pytest.fixture(scope="module")
def scripted(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModels]:
    root = tmp_path_factory.mktemp("scripted")
    return {
        kind: TinyModels(asr=build_scripted_asr(root / kind, kind), aligner=tiny.aligner)
        for kind in ("loop", "stubborn", "format")
    }


def decode(loaded: tuple[Any, Any], *clips: Clip) -> list[Transcript]:
    engine, model = loaded
    return engine.transcribe(model, list(clips))


def clips(budget: int = BUDGET) -> list[Clip]:
    return [Clip(AUDIO, "English", "", budget), Clip(AUDIO, None, "", budget)]


def words(transcript: Transcript) -> list[str]:
    return [token.text for token in transcript.tokens]


def test_a_loop_is_cut_and_the_guarded_retry_holds(backend: str, scripted: dict[str, TinyModels]) -> None:
    for result in decode(_engine(backend, scripted["loop"]), *clips()):
        assert result.loop_cut
        assert result.text == LOOP_RETRIED  # the retry could not turn the cycle again, and ended
        assert words(result) == [" ok", " go", " up", " no"]
        *cycle, retried = result.tokens
        assert all(t.logprob == pytest.approx(0.0, abs=1e-3) for t in cycle)
        # the model's own probability, not the guarded retry's renormalised one
        assert retried.logprob == pytest.approx(SECOND_CHOICE_LOGPROB, abs=1.0)
        assert retried.bytes == tuple(b" no")
        assert result.raw.strip() == LOOP_RETRIED  # a later partial's prefix holds no loop either


def test_a_loop_that_comes_back_keeps_the_cut_text(backend: str, scripted: dict[str, TinyModels]) -> None:
    for result in decode(_engine(backend, scripted["stubborn"]), *clips()):
        assert (result.loop_cut, result.text, words(result)) == (True, LOOP_ONCE, [" ok", " go", " up"])


def test_without_the_guard_the_loop_runs_to_the_budget(backend: str, scripted: dict[str, TinyModels]) -> None:
    for result in decode(_engine(backend, scripted["loop"], POLYASR_LOOP_GUARD="0"), *clips()):
        assert not result.loop_cut
        assert len(result.tokens) == BUDGET
        assert find_loop([hash(w) for w in words(result)]) is not None


def test_a_decode_that_does_not_loop_gives_the_tokens_it_gave_before(backend: str, tiny: TinyModels) -> None:
    """Random weights run to their budget, often repeating themselves; every
    decode the guard leaves alone is exactly the unguarded decode, tokens and
    scores included."""
    guarded, unguarded = _engine(backend, tiny), _engine(backend, tiny, POLYASR_LOOP_GUARD="0")
    batch = [
        Clip(speech(name)[:16_000], language, "", budget)
        for name in ("voice_a", "voice_b")
        for language in ("English", None)
        for budget in (12, 20)
    ]
    mine, before = decode(guarded, *batch), decode(unguarded, *batch)
    kept = [(m, b) for m, b in zip(mine, before, strict=True) if not m.loop_cut]
    assert len(kept) >= len(batch) // 2
    assert all(m == b and m.tokens for m, b in kept)


def test_format_markers_never_reach_the_text(backend: str, scripted: dict[str, TinyModels]) -> None:
    loaded = _engine(backend, scripted["format"])
    pinned, detected = decode(loaded, *clips())
    assert "<asr_text>" in pinned.raw and "language English" in detected.raw  # the model wrote them
    for result in (pinned, detected):
        assert (result.text, result.language) == (SCRIPTED_TEXT, "English")
        assert words(result) == [" ok", " go"]  # the words' tokens only
    # a partial that continues an answer: the prefix is rolled back and re-read by the same parser
    (continued,) = decode(loaded, Clip(AUDIO, "English", "", BUDGET, prefix=pinned.raw))
    assert continued.text.replace("ok go", "").strip() == "" and "asr" not in continued.text


def test_mlx_loop_gives_the_library_s_own_tokens(backend: str, tiny: TinyModels, tmp_path: Path) -> None:
    """The MLX engine's greedy loop is mlx-qwen3-asr's ``generate_with_info``
    step for step (within a budget its own repetition test never ends)."""
    if backend != "mlx":
        pytest.skip("the MLX engine's own loop")
    import mlx.core as mx
    from mlx_qwen3_asr.audio import compute_features
    from mlx_qwen3_asr.generate import GenerationConfig, generate_with_info

    from polyasr.engines.mlx_decode import greedy

    _, session = _engine(backend, tiny)
    mel, lens = compute_features(speech("voice_b"))
    features, _ = session.model.audio_tower(mel.astype(session.dtype), lens)
    prompt = session.tokenizer.build_prompt_tokens(n_audio_tokens=int(features.shape[1]), language="English")
    ids = mx.array([prompt])
    positions = mx.arange(ids.shape[1])[None, :]
    library = generate_with_info(
        model=session.model,
        input_ids=ids,
        audio_features=features,
        position_ids=mx.stack([positions, positions, positions], axis=1),
        config=GenerationConfig(max_new_tokens=19, temperature=0.0),
    )
    ours = greedy(session.model, ids, features, 19, watch=True)
    assert ours.ids == library.tokens and len(ours.logprobs) == len(ours.ids)
    assert all(lp <= 0 for lp in ours.logprobs)


def test_cuda_fast_loop_stops_a_looping_row_early(backend: str, scripted: dict[str, TinyModels]) -> None:
    """The fast loop (eager on the CPU) looks at its tokens every few steps
    and ends a looping row there, long before its budget; the transcript is
    generate's."""
    if backend != "cuda":
        pytest.skip("the CUDA fast loop")
    from polyasr.engines.cuda_decode import generate_rows

    fast = _engine(backend, scripted["loop"], POLYASR_DECODE="fast")
    slow = _engine(backend, scripted["loop"], POLYASR_DECODE="generate")
    assert decode(fast, *clips()) == decode(slow, *clips())
    engine, model = fast
    prompts = [model._build_text_prompt(context="", force_language="English")]
    inputs = model.processor(text=prompts, audio=[AUDIO], return_tensors="pt", padding=True)
    (row,) = engine._fast.ids(model, inputs, [200], None, generate_rows, True)
    assert 33 <= len(row.ids) <= 33 + 8  # stopped at the first look after the rule fired
    assert len(row.logprobs) == len(row.ids)
