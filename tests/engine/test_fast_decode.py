"""The CUDA engine's fast decode loop gives exactly ``generate``'s tokens.

On the CPU, in float32, with the tiny checkpoints: the static-cache loop
(without CUDA graphs) against transformers' ``generate``, clip by clip, for a
single clip, a batch of unequal lengths, prefix continuations of differing
lengths in one batch, budgets that stop mid-text, and end-of-answer tokens.
Also the settings around it: ``POLYASR_DECODE`` / ``POLYASR_COMPILE`` and what
``/health`` reports. CUDA-only: skipped where qwen-asr is not installed.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("qwen_asr")

import torch

from polyasr.core.config import ConfigError, load_settings
from polyasr.core.engine import ROLLBACK_TOKENS, Clip, Preempted
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import Priority
from tests.audio_util import speech
from tests.conftest import engine_class, tiny_env
from tests.fixtures.tiny_models import IM_END_ID, TinyModels

VOICE_A, VOICE_B = speech("voice_a"), speech("voice_b")
Loaded = tuple[Any, Any]  # (engine, model)


def _load(tiny: TinyModels, decode: str, **env: str) -> Loaded:
    settings = load_settings("cuda", tiny_env(tiny, POLYASR_LOG_DIR="", POLYASR_DECODE=decode, **env))
    engine = engine_class("cuda")(settings)
    return engine, engine.load("asr")


@pytest.fixture(scope="module")
def pair(tiny: TinyModels) -> dict[str, Loaded]:
    """The same checkpoint loaded once per decode path."""
    return {decode: _load(tiny, decode) for decode in ("fast", "generate")}


def _inputs(model: Any, clips: list[Clip]) -> Any:
    prompts = [model._build_text_prompt(context=c.context, force_language=c.language) for c in clips]
    return model.processor(text=prompts, audio=[c.samples for c in clips], return_tensors="pt", padding=True)


def token_ids(loaded: Loaded, clips: list[Clip]) -> list[list[int]]:
    """New token ids per clip, by the engine's decode path."""
    engine, model = loaded
    return engine.generated_ids(model, _inputs(model, clips), [c.max_new_tokens for c in clips])


def assert_same(pair: dict[str, Loaded], clips: list[Clip]) -> list[list[int]]:
    """Both paths agree on token ids and on every transcript field; returns the ids."""
    fast, slow = token_ids(pair["fast"], clips), token_ids(pair["generate"], clips)
    assert fast == slow
    engine, model = pair["fast"]
    reference, reference_model = pair["generate"]
    assert engine.transcribe(model, clips) == reference.transcribe(reference_model, clips)
    return fast


def test_paths_are_what_the_settings_say(pair: dict[str, Loaded]) -> None:
    assert pair["fast"][0].info()["decode"] == "fast"
    assert pair["generate"][0].info()["decode"] == "generate"
    # The fast loop batches up to its largest bucket, generate keeps the old cap.
    assert (pair["fast"][0].max_batch, pair["generate"][0].max_batch) == (32, 8)


def test_single_clip(pair: dict[str, Loaded]) -> None:
    (ids,) = assert_same(pair, [Clip(VOICE_A, "English", "", 24)])
    assert len(ids) == 24  # random weights write their whole budget


def test_batch_of_unequal_lengths(pair: dict[str, Loaded]) -> None:
    clips = [
        Clip(VOICE_A, "English", "", 20),
        Clip(VOICE_B[:8000], None, "", 20),  # half a second, language detected
        Clip(VOICE_B, "German", "some context words", 20),
    ]
    mask = _inputs(pair["fast"][1], clips)["attention_mask"]
    assert len(set(mask.sum(-1).tolist())) == 3  # three prompt lengths: real left padding
    assert_same(pair, clips)


def test_prefix_continuations_of_differing_lengths(pair: dict[str, Loaded]) -> None:
    engine, model = pair["generate"]
    previous = engine.transcribe(model, [Clip(VOICE_A, "English", "", 30)])[0].raw
    tokenizer = model.processor.tokenizer
    ids = tokenizer.encode(previous, add_special_tokens=False)
    short = tokenizer.decode(ids[: ROLLBACK_TOKENS + 4], skip_special_tokens=False)
    clips = [
        Clip(VOICE_A, "English", "", 12, prefix=previous),
        Clip(VOICE_A, "English", "", 12, prefix=short),
        Clip(VOICE_B, "English", "", 12),
    ]
    assert_same(pair, clips)
    results = pair["fast"][0].transcribe(pair["fast"][1], clips)
    kept = tokenizer.decode(ids[:-ROLLBACK_TOKENS], skip_special_tokens=False)
    assert results[0].raw.startswith(kept) and len(kept) > len(short)
    assert results[1].raw.startswith(tokenizer.decode(ids[:4], skip_special_tokens=False))


def test_each_clip_stops_at_its_own_budget(pair: dict[str, Loaded]) -> None:
    clips = [Clip(VOICE_A, "English", "", budget) for budget in (3, 17, 1, 9)]
    ids = assert_same(pair, clips)
    assert [len(row) for row in ids] == [3, 17, 1, 9]


@pytest.fixture
def eos_pair(tiny: TinyModels) -> Iterator[dict[str, Loaded]]:
    """Both paths on a checkpoint edited so that some answers end early.

    ``<|im_end|>``'s (tied) embedding becomes a slightly longer copy of a token
    the first clip writes early, so wherever that token would win, the end of
    the answer wins instead; other clips never write it and run to the budget.
    """
    pair = {decode: _load(tiny, decode) for decode in ("fast", "generate")}
    first = token_ids(pair["generate"], EOS_CLIPS)[0][1]
    for _engine, model in pair.values():
        weight = model.model.thinker.model.embed_tokens.weight
        with torch.no_grad():
            weight[IM_END_ID] = weight[first] * 1.02
    yield pair


EOS_CLIPS = [
    Clip(VOICE_A, "English", "", 30),
    Clip(VOICE_B[:32000], None, "", 30),
    Clip(VOICE_A[:8000], "English", "ctx", 30),
    Clip(VOICE_B, "German", "", 30),
]


def test_end_of_answer_stops_a_clip_and_not_its_batch(eos_pair: dict[str, Loaded]) -> None:
    ids = assert_same(eos_pair, EOS_CLIPS)
    ended = [row for row in ids if row[-1] == IM_END_ID]
    assert ended and all(len(row) < 30 for row in ended)
    assert any(len(row) == 30 and IM_END_ID not in row for row in ids)


def test_preemption_between_steps(pair: dict[str, Loaded]) -> None:
    engine, model = pair["fast"]
    polls: list[int] = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) == 5

    with pytest.raises(Preempted):
        engine.transcribe(model, [Clip(VOICE_A, "English", "", 40)], should_stop)
    assert len(polls) == 5  # polled once per step, stopped at the first yes
    assert_same(pair, [Clip(VOICE_A, "English", "", 10)])  # and the loop is clean afterwards


def test_batch_too_long_for_the_static_cache_falls_back_to_generate(
    pair: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, model = pair["fast"]
    calls: list[int] = []
    real = model.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["max_new_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(model.model, "generate", spy)
    long_context = Clip(VOICE_A, "English", "hello world " * 800, 4)  # > 1280 prompt tokens
    engine.transcribe(model, [Clip(VOICE_A, "English", "", 4)])
    assert calls == []  # fits: the fast loop
    engine.transcribe(model, [long_context])
    assert calls == [4]


def test_compiled_step_runs_the_graph_shape_and_matches_generate(
    tiny: TinyModels, pair: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``POLYASR_COMPILE`` the step runs as a captured graph replays it:
    a whole bucket (padding rows included) over a fixed attention span of the
    cache, unwritten positions masked. torch.compile itself is stubbed out
    (too slow for CI on the CPU); what it is handed must still give
    ``generate``'s tokens."""
    compiled: list[Any] = []

    def fake_compile(fn: Any, **_kw: Any) -> Any:
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    engine, model = _load(tiny, "fast", POLYASR_COMPILE="1")
    assert [fn.__name__ for fn in compiled] == ["_step"]
    assert engine.info()["compile"] is True and engine.info()["graphs"] is False
    clips = [
        Clip(VOICE_A, "English", "", 30),
        Clip(VOICE_B[:32000], None, "", 40),
        Clip(VOICE_A[:8000], "English", "ctx words", 13),  # 3 clips: a bucket of 4
    ]
    assert token_ids((engine, model), clips) == token_ids(pair["generate"], clips)
    # compile is part of the fast path only
    assert _load(tiny, "generate", POLYASR_COMPILE="1")[0].info()["compile"] is False


def test_decode_setting_defaults_and_validation(tiny: TinyModels) -> None:
    cpu = load_settings("cuda", tiny_env(tiny))
    assert cpu.decode is None and engine_class("cuda")(cpu).decode == "generate"  # auto on the CPU
    with pytest.raises(ConfigError, match="POLYASR_DECODE='turbo'"):
        load_settings("cuda", tiny_env(tiny, POLYASR_DECODE="turbo"))


def test_health_reports_the_decode_path(make_client: Any) -> None:
    http, _engine = make_client(POLYASR_DECODE="fast")
    body = http.get("/health").json()
    assert (body["decode"], body["graphs"], body["compile"]) == ("fast", False, False)
    http, _engine = make_client()
    assert http.get("/health").json()["decode"] == "generate"


async def test_scheduler_batches_up_to_the_engines_largest_bucket(pair: dict[str, Loaded]) -> None:
    sizes: dict[str, list[int]] = {}
    for decode, (engine, _model) in pair.items():
        mgr = AsrModelManager(engine, coload=True, idle_seconds=0, load_timeout=300)
        gate = threading.Event()
        seen = sizes.setdefault(decode, [])

        def batch(_model: Any, payloads: list[int], _stop: Any, seen: list[int] = seen) -> list[int]:
            seen.append(len(payloads))
            return payloads

        blocker = asyncio.ensure_future(mgr.run("asr", lambda _m, gate=gate: gate.wait(), Priority.FINAL))
        while not mgr.is_resident("asr"):
            await asyncio.sleep(0.01)
        queued = [
            asyncio.ensure_future(mgr.unit("asr").run_batched("k", batch, i, Priority.BATCH))
            for i in range(40)
        ]
        await asyncio.sleep(0.1)
        gate.set()
        assert await asyncio.gather(*queued) == list(range(40))
        await blocker
        await mgr.close()
    assert sizes == {"fast": [32, 8], "generate": [8, 8, 8, 8, 8]}


def test_dropping_the_model_frees_its_decoder(tiny: TinyModels) -> None:
    """An eviction drops the model; the static cache (and on a GPU the graphs'
    memory pool) must go with it, or an unload would not give memory back."""
    engine, model = _load(tiny, "fast")
    decoder = weakref.ref(engine._fast.decoders[model])
    del model
    gc.collect()
    assert decoder() is None
