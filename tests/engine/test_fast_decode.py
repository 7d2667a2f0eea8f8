"""The CUDA engine's fast decode loop gives exactly ``generate``'s tokens.

On the CPU, in float32, with the tiny checkpoints: the static-cache loop
(without CUDA graphs) against transformers' ``generate``, clip by clip, for a
single clip (no mask), a batch of unequal lengths (the additive mask),
prefix continuations of differing lengths in one batch, budgets that stop
mid-text, and end-of-answer tokens; the graph path (each step replayed at the
span that holds its position) with capture stood in for by eager runs; a
batch with one clip too long for the static cache. Also how it runs
(grouped-query attention on the cache in place, the vocabulary head on the
last prompt position only, no step after the batch is done, one thread at a
time, capture on the model's device with the other unit kept off it), the
settings around it (``POLYASR_DECODE``, ``POLYASR_COMPILE``,
``POLYASR_DECODE_ROWS`` / ``POLYASR_DECODE_SPAN``) and what ``/health`` and
``/metrics`` report.
CUDA-only: skipped where qwen-asr is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("qwen_asr")

import torch

from polyasr.api.metrics import Metrics
from polyasr.core.config import ConfigError, load_settings
from polyasr.core.engine import ROLLBACK_TOKENS, Clip, Preempted, Transcript
from polyasr.engines import cuda_graphs, fast_decode
from polyasr.engines.fast_decode import FastDecoder
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import Priority
from tests.audio_util import speech, wav_bytes
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
    got, expected = engine.transcribe(model, clips), reference.transcribe(reference_model, clips)
    assert [_unscored(t) for t in got] == [_unscored(t) for t in expected]
    for mine, theirs in zip(got, expected, strict=True):  # the same tokens, scored alike
        assert [t.logprob for t in mine.tokens] == pytest.approx([t.logprob for t in theirs.tokens], abs=1e-3)
    return fast


def _unscored(transcript: Transcript) -> Transcript:
    """``transcript`` with its tokens' log-probabilities left out (two decode
    paths compute them in a different order of float operations)."""
    return replace(transcript, tokens=tuple(replace(t, logprob=0.0) for t in transcript.tokens))


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
    # A batch whose every clip has ended runs no further step (checked every step).
    engine, model = eos_pair["fast"]
    decoder = engine._fast.decoders[model]
    steps: list[int] = []
    real = decoder._step_fn
    decoder._step_fn = lambda *args: steps.append(1) or real(*args)
    (alone,) = token_ids((engine, model), EOS_CLIPS[:1])
    assert alone[-1] == IM_END_ID and len(alone) < 30 and len(steps) == len(alone) - 1


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


def test_a_clip_too_long_for_the_static_cache_runs_alone_on_generate(
    pair: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One long-context clip no longer costs its whole batch the fast loop: it
    runs alone on ``generate``, the others stay on the fast loop with the
    tokens ``generate`` gives them; the first such clip is logged once, and
    each is counted for /metrics and /health."""
    engine, model = pair["fast"]
    reference = pair["generate"]
    rows: list[int] = []
    real = model.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        rows.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model.model, "generate", spy)
    long_context = Clip(VOICE_A[:8000], "English", "hello world " * 640, 2)  # > 1280 prompt tokens
    short = [Clip(VOICE_A, "English", "", 12), Clip(VOICE_B[:16000], None, "", 9)]
    engine.transcribe(model, short)
    assert rows == []  # fits: the fast loop
    before = engine.counters()["long_clip_on_generate"]
    with caplog.at_level(logging.WARNING, logger="polyasr.cuda"):
        ids = token_ids((engine, model), [short[0], long_context, short[1]])
        token_ids((engine, model), [long_context])
    assert rows == [1, 1]  # only the long clip went to generate, alone
    assert len(ids[1]) == 2 and [ids[0], ids[2]] == token_ids(reference, short)
    assert engine.counters()["long_clip_on_generate"] == before + 2
    assert len([r for r in caplog.records if "POLYASR_DECODE_SPAN" in r.getMessage()]) <= 1
    assert engine.info()["fast_decode"]["long_clips_on_generate"] == before + 2
    metrics = Metrics(queue_depth=lambda _unit: 0, engine_memory=dict, engine_counters=engine.counters)
    exposition = metrics.exposition()[0].decode()
    assert f'polyasr_engine_events_total{{event="long_clip_on_generate"}} {before + 2}.0' in exposition


# Three clips (a bucket of 4) that the graph and compile paths decode, with
# generate's tokens for them computed once.
THREE = [
    Clip(VOICE_A, "English", "", 30),
    Clip(VOICE_B[:32000], None, "", 40),
    Clip(VOICE_A[:8000], "English", "ctx words", 13),
]


@pytest.fixture(scope="module")
def three_reference(pair: dict[str, Loaded]) -> list[list[int]]:
    return token_ids(pair["generate"], THREE)


def test_compiled_step_runs_the_graph_shape_and_matches_generate(
    tiny: TinyModels, three_reference: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``POLYASR_COMPILE`` the step runs as a captured graph replays it:
    a whole bucket (padding rows included) over a fixed attention span of the
    cache, unwritten positions masked, and gives ``generate``'s tokens.
    Dynamo traces it for real (the "eager" backend stands in for Inductor's
    code generation, too slow for CI on the CPU), with dynamic shapes: a cold
    load compiles a bounded few graphs, at load, and a reload in the same
    process compiles none."""
    from torch._dynamo.utils import counters

    real = torch.compile
    compiled: list[Any] = []

    def traced(fn: Any, **kw: Any) -> Any:
        compiled.append(fn)
        return real(fn, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", traced)
    small = {"POLYASR_COMPILE": "1", "POLYASR_DECODE_ROWS": "4", "POLYASR_DECODE_SPAN": "512"}
    before = counters["stats"]["unique_graphs"]
    engine, model = _load(tiny, "fast", **small)
    cold = counters["stats"]["unique_graphs"] - before
    assert [fn.__name__ for fn in compiled] == ["_step"]
    assert engine.info()["compile"] is True and engine.info()["graphs"] is False
    assert 1 <= cold <= 2  # batch 1 and the rest: not one per bucket and span
    assert token_ids((engine, model), THREE) == three_reference
    del model
    gc.collect()
    engine, model = _load(tiny, "fast", **small)
    assert token_ids((engine, model), THREE[:1]) == three_reference[:1]
    assert counters["stats"]["unique_graphs"] - before == cold  # the reload compiled nothing
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


def test_attention_reads_the_cache_in_place_with_grouped_queries_and_a_float_mask(
    pair: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No K/V copy per layer and step (transformers' boolean-mask path repeats
    K/V to every query head): SDPA gets the cache's own key/value heads, the
    query heads grouped onto them, and an additive float mask, or none for a
    batch without padding."""
    engine, model = pair["fast"]
    decoder = engine._fast.decoders[model]
    calls: list[tuple[int, int, Any]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(query: Any, key: Any, value: Any, attn_mask: Any = None, **kw: Any) -> Any:
        calls.append((query.shape[1], key.shape[1], None if attn_mask is None else attn_mask.dtype))
        return real(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(fast_decode, "F", SimpleNamespace(scaled_dot_product_attention=spy))
    token_ids((engine, model), [Clip(VOICE_A, "English", "", 3)])
    token_ids((engine, model), [Clip(VOICE_A, "English", "", 3), Clip(VOICE_B[:8000], None, "", 3)])
    kv = decoder.kv_heads
    assert decoder.groups > 1 and calls  # the tiny model has grouped-query attention
    assert {(q, k) for q, k, _ in calls} == {(kv, kv)}  # query groups on the cache's kv heads
    assert {m for _, _, m in calls} == {None, torch.float32}  # no mask alone, a float mask padded


def test_the_prompt_goes_through_the_vocabulary_head_at_its_last_position_only(
    pair: dict[str, Loaded],
) -> None:
    engine, model = pair["fast"]
    head = model.model.thinker.lm_head
    shapes: list[tuple[int, ...]] = []
    hook = head.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        token_ids((engine, model), [Clip(VOICE_A, "English", "", 2)])
    finally:
        hook.remove()
    prefill, step = shapes
    assert prefill[:2] == (1, 1)  # the prompt's head call: one position, not the whole prompt
    assert len(step) == 2  # then one step


class EagerGraphs:
    """Capture stood in for on the CPU: a "replay" runs the step eagerly, at
    the bucket and span it was captured for; every replay is recorded."""

    def __init__(self) -> None:
        self.replays: list[tuple[int, int]] = []

    def capture(self, step: Callable[[], None], reset: Callable[[], None]) -> Callable[[], None]:
        reset()
        step()
        key = step.__defaults__  # (batch, span) the decoder bound to this graph

        def replay() -> None:
            self.replays.append(key)  # type: ignore[arg-type]
            step()

        return replay

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def test_graph_replays_grow_their_span_with_the_position_and_match_generate(
    pair: dict[str, Loaded], three_reference: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph path on the CPU: a bucket's padding rows, a fixed span per
    replay (the smallest that holds the position, so it changes mid-decode:
    spans every 32 positions here), unwritten positions masked; still
    ``generate``'s tokens."""
    engine, model = pair["fast"]
    graphs = EagerGraphs()
    monkeypatch.setattr(fast_decode, "SPAN_STEP", 32)
    decoder = FastDecoder(model, max_new_tokens=64, rows=4, positions=512, graphs=graphs, compile=False)
    assert len({key for key in decoder._graphs}) == len(decoder.buckets) * len(decoder.spans)
    clips = THREE
    prompt_len = _inputs(model, clips)["input_ids"].shape[1]
    original = engine._fast.decoders[model]
    engine._fast.decoders[model] = decoder
    try:
        assert token_ids((engine, model), clips) == three_reference
    finally:
        engine._fast.decoders[model] = original
    spans = sorted({span for batch, span in graphs.replays})
    assert {batch for batch, _ in graphs.replays} == {4}
    assert spans == sorted(
        {decoder.span(prompt_len + t + 1) for t in range(max(c.max_new_tokens for c in clips) - 1)}
    )
    assert len(spans) >= 2 and spans[-1] < 512  # grown mid-decode, never the whole cache


def test_one_thread_decodes_at_a_time(pair: dict[str, Loaded]) -> None:
    """The buffers are the loop's state: a second thread is refused, not let in."""
    engine, model = pair["fast"]
    inside, release = threading.Event(), threading.Event()

    def held() -> bool:
        inside.set()
        release.wait(30)
        return False

    first = threading.Thread(
        target=lambda: engine.transcribe(model, [Clip(VOICE_A, "English", "", 3)], held), daemon=True
    )
    first.start()
    assert inside.wait(30)
    with pytest.raises(RuntimeError, match="already decoding on another thread"):
        token_ids((engine, model), [Clip(VOICE_A, "English", "", 3)])
    release.set()
    first.join(30)
    assert_same(pair, [Clip(VOICE_A, "English", "", 5)])  # and the loop is clean afterwards


def test_capture_names_the_models_device_and_captures_thread_locally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model on ``cuda:1`` while this thread's current device is another:
    every stream, pool and synchronisation names ``cuda:1``, and capture is
    thread-local (torch.cuda is faked: no GPU here)."""
    seen: list[Any] = []
    modes: list[str] = []

    @contextlib.contextmanager
    def device(where: Any) -> Iterator[None]:
        seen.append(("device", where))
        yield

    class Stream:
        def __init__(self, device: Any = None) -> None:
            seen.append(("stream", device))

        def wait_stream(self, _other: Any) -> None:
            pass

    class Graph:
        def replay(self) -> None:
            seen.append(("replay", None))

    @contextlib.contextmanager
    def graph(
        _g: Any, pool: Any = None, stream: Any = None, capture_error_mode: str = "global"
    ) -> Iterator[None]:
        modes.append(capture_error_mode)
        assert stream is not None and pool == "pool"  # never torch's own side stream on the current device
        yield

    fake = torch.cuda
    monkeypatch.setattr(fake, "device", device)
    monkeypatch.setattr(fake, "Stream", Stream)
    monkeypatch.setattr(fake, "stream", lambda _s: contextlib.nullcontext())
    monkeypatch.setattr(
        fake, "current_stream", lambda where=None: seen.append(("current", where)) or Stream(where)
    )
    monkeypatch.setattr(fake, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(fake, "CUDAGraph", Graph)
    monkeypatch.setattr(fake, "graph", graph)
    monkeypatch.setattr(fake, "synchronize", lambda where=None: seen.append(("synchronize", where)))
    target = torch.device("cuda:1")
    graphs = cuda_graphs.CudaGraphs(target)
    runs: list[int] = []
    replay = graphs.capture(lambda: runs.append(1), lambda: None)
    replay()
    assert runs == [1] * (cuda_graphs.WARMUP_STEPS + 1) and modes == ["thread_local"]
    named = [where for kind, where in seen if kind != "replay"]
    assert named and all(where == target for where in named), seen


def test_static_cache_size_is_a_setting_reported_in_health_and_freed_on_unload(make_client: Any) -> None:
    http, engine = make_client(POLYASR_DECODE="fast", POLYASR_DECODE_ROWS="4", POLYASR_DECODE_SPAN="512")
    assert engine.max_batch == 4
    assert (
        http.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(VOICE_A[:16000]))}
        ).status_code
        == 200
    )
    loaded = http.get("/health").json()["fast_decode"]
    assert (loaded["rows"], loaded["span"], loaded["long_clips_on_generate"]) == (4, 512, 0)
    config = engine._engine._fast.decoders  # the SpyEngine wraps the real one
    (decoder,) = list(config.values())
    assert (decoder.buckets, decoder.spans) == ((1, 2, 4), (128, 256, 384, 512))
    assert loaded["cache_mib"] == round(decoder.cache_bytes / 2**20, 1) > 0
    del decoder, config
    engine.calls.clear()  # the spy's record holds the model
    assert http.post("/model/unload").status_code == 200
    gc.collect()
    assert http.get("/health").json()["fast_decode"]["cache_mib"] == 0.0
    with pytest.raises(ConfigError, match="POLYASR_DECODE_SPAN must exceed POLYASR_MAX_NEW_TOKENS"):
        load_settings("cuda", {"POLYASR_DECODE_SPAN": "256", "POLYASR_MAX_NEW_TOKENS": "256"})


def test_the_aligner_stays_off_the_device_while_a_step_is_captured(
    tiny: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Capture holds the engine's device lock: the other unit's aligner waits
    for it (as emptying the cache does), so no other thread's GPU work can
    land in, or break, a capture. The capture is stood in for by a pause."""
    from polyasr.engines import cuda

    engine, _model = _load(tiny, "fast")
    aligner = engine.load("align")
    capturing, release = threading.Event(), threading.Event()
    real = cuda.FastDecoder

    def slow_capture(*args: Any, **kwargs: Any) -> FastDecoder:
        capturing.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(cuda, "FastDecoder", slow_capture)
    loader = threading.Thread(target=engine.load, args=("asr",), daemon=True)
    loader.start()
    assert capturing.wait(30)
    aligned: list[Any] = []
    worker = threading.Thread(
        target=lambda: aligned.append(engine.align(aligner, Clip(VOICE_A), "hello world", "English")),
        daemon=True,
    )
    worker.start()
    worker.join(0.5)
    assert not aligned  # waiting for the capture
    release.set()
    worker.join(60)
    loader.join(60)
    assert aligned and aligned[0]
