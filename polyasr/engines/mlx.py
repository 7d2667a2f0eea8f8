"""The MLX engine (Apple Silicon; served by ``server.py`` on port 8765).

This module is the only place that knows MLX. The ``asr`` unit is an
mlx-qwen3-asr ``Session`` (decoded through the library's own building blocks,
so a streaming partial can continue a previous answer); the ``align`` unit is
mlx-audio's Qwen3-ForcedAligner. Everything a client observes comes from the
shared app factory. On Linux the CPU build of MLX runs the same code (that is
how the test suite exercises this engine without a Mac).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polyasr.core.answer import ASR_TEXT, parse_answer, scored_tokens, strip_format
from polyasr.core.config import ConfigError, Settings
from polyasr.core.engine import AlignedUnit, Clip, Transcript, rolled_back_ids
from polyasr.core.loops import cut

_MB = 1_048_576


def _device(mx: Any, name: str) -> Any:
    """``POLYASR_DEVICE`` as an MLX device (``default``: MLX's own choice;
    ``gpu``, ``cpu``, optionally ``:N``); refused at start-up, naming the
    variable, when MLX cannot parse or use it."""
    if name.strip().lower() == "default":
        return mx.default_device()
    kind, _, index = name.strip().lower().partition(":")
    if kind not in ("gpu", "cpu") or not (index.isdigit() or index == ""):
        raise ConfigError(f"POLYASR_DEVICE={name!r} is not an MLX device; use gpu or cpu")
    device = mx.Device(getattr(mx, kind), int(index or 0))
    if not mx.is_available(device):
        raise ConfigError(f"POLYASR_DEVICE={name} but MLX has no such device here; set POLYASR_DEVICE=cpu")
    return device


class MlxEngine:
    """mlx-qwen3-asr for transcription, mlx-audio for forced alignment."""

    backend = "mlx"
    align_coverage_fallback = True  # MLX keeps the safety net
    max_batch = 8  # clips per transcribe call (the scheduler's batch cap)

    def __init__(self, settings: Settings) -> None:
        import mlx.core as mx

        self._mx = mx
        # Everything this process computes runs there (MLX's default device is global).
        mx.set_default_device(_device(mx, settings.device))
        self.model_id = settings.model
        self.aligner_id = settings.aligner_model
        self.dtype_name = settings.dtype
        self.dtype = getattr(mx, settings.dtype)
        self.stream_max_context_sec = settings.stream_max_context_sec
        self.stream_finalization_mode = settings.stream_finalization_mode
        self.loop_guard = settings.loop_guard

    # mlx-qwen3-asr's Session has its own streaming decoder (windowed re-decode
    # with a rolled-back text prefix), available with any model.
    supports_native_streaming = True

    def stream_open(self, model: Any, *, context: str, language: str | None, chunk_sec: float) -> Any:
        return model.init_streaming(
            context=context,
            language=language,
            chunk_size_sec=chunk_sec,
            max_context_sec=self.stream_max_context_sec,
            finalization_mode=self.stream_finalization_mode,
        )

    def stream_feed(self, model: Any, state: Any, samples: Any) -> tuple[Any, str]:
        state = model.feed_audio(samples, state)
        return state, strip_format(state.text)

    def stream_finish(self, model: Any, state: Any) -> str:
        return strip_format(model.finish_streaming(state).text)

    def load(self, unit: str) -> Any:
        if unit == "align":
            return self._load_aligner()
        from mlx_qwen3_asr import Session

        return Session(self.model_id, dtype=self.dtype)

    def _load_aligner(self) -> Any:
        """mlx-audio's Qwen3-ForcedAligner.

        ``load_model`` picks the class from the checkpoint's config: a
        ``qwen3_forced_aligner`` thinker gives a wrapper around
        ``ForcedAlignerModel``, but an ASR checkpoint loads just as happily
        as ``Qwen3ASRModel``, whose ``generate`` would then transcribe
        instead of align. Refuse that here, so a misconfigured
        ``POLYASR_ALIGNER_MODEL`` is a clear "cannot load" (503).
        """
        from mlx_audio.stt.models.qwen3_asr.qwen3_forced_aligner import ForcedAlignerModel
        from mlx_audio.stt.utils import load_model

        model = load_model(self.aligner_id)
        if not isinstance(getattr(model, "_model", model), ForcedAlignerModel):
            raise TypeError(f"{self.aligner_id} is not a Qwen3-ForcedAligner checkpoint")
        return model

    def empty_cache(self) -> None:
        self._mx.clear_cache()

    def transcribe(
        self, model: Any, clips: list[Clip], should_stop: Callable[[], bool] | None = None
    ) -> list[Transcript]:
        """Decode clip by clip: MLX gains little from padding a batch on one device.

        Each decode's buffers go back to the system before the next one, as
        the library's own ``transcribe`` does after every chunk, so the MLX
        buffer cache does not keep growing with the longest clip seen.
        mlx-qwen3-asr offers no hook between tokens, so ``should_stop`` is not
        polled: a partial runs to its (small) token budget.
        """
        results = []
        for clip in clips:
            results.append(self._decode(model, clip))
            self._mx.clear_cache()
        return results

    def _decode(self, session: Any, clip: Clip) -> Transcript:
        """One clip through mlx-qwen3-asr's per-chunk recipe, answer prefix included.

        The steps are those of the library's ``transcribe`` for one chunk
        (log-mel features, audio tower, chat-template prompt, greedy decode),
        with additions its high-level ``Session.transcribe`` cannot express:
        the prompt may end with the start of the answer (a previous raw
        hypothesis minus its last tokens, as its own streaming decoder feeds
        it), so a partial generates only the new words and ``raw`` is that
        prefix plus them; the decode scores its tokens and guards against
        repetition loops (:mod:`polyasr.engines.mlx_decode`); and the answer
        is read by the shared parser. ``tokens`` score only the generated
        words, never the answer prefix. The library would split audio over
        30 s into chunks; clips arrive already split at quiet points
        (``polyasr.models.transcriber.MAX_PIECE_SEC``), so every clip is one
        chunk and has one raw answer to continue from.
        """
        from mlx_qwen3_asr.audio import compute_features
        from mlx_qwen3_asr.tokenizer import canonicalize_language

        from polyasr.engines.mlx_decode import greedy

        mx = self._mx
        tokenizer = session.tokenizer
        forced = canonicalize_language(clip.language)
        mel, feature_lens = compute_features(clip.samples)
        audio_features, _ = session.model.audio_tower(mel.astype(session.dtype), feature_lens)
        prompt = tokenizer.build_prompt_tokens(
            n_audio_tokens=int(audio_features.shape[1]), language=forced, context=clip.context
        )
        prefix_ids = rolled_back_ids(tokenizer.encode(clip.prefix), tokenizer.decode, clip.prefix)
        input_ids = mx.array([prompt + prefix_ids])
        budget = clip.max_new_tokens
        decoded = greedy(session.model, input_ids, audio_features, budget, watch=self.loop_guard)
        ids, loop = decoded.ids, None
        if self.loop_guard:
            ids, loop = cut(ids, ended=decoded.ended)
        logprobs = decoded.logprobs[: len(ids)]
        if loop is not None:
            retry = greedy(session.model, input_ids, audio_features, budget, watch=False, ban=loop.span)
            if retry.ended:  # the answer ended: the retry holds
                ids, logprobs = retry.ids, retry.logprobs
        raw = tokenizer.decode(prefix_ids + ids)
        answer = parse_answer(raw, forced)
        vocab = _Vocabulary.of(tokenizer)
        tokens = scored_tokens(
            ids, logprobs, marker_id=vocab.marker, skip=vocab.special, piece=vocab.piece, text=vocab.text
        )
        return Transcript(answer.text, answer.language, raw, tokens, loop is not None)

    def align(self, model: Any, clip: Clip, text: str, language: str) -> list[AlignedUnit]:
        result = model.generate(clip.samples, text=text, language=language)
        return [AlignedUnit(item.text, item.start_time, item.end_time) for item in result]

    def counters(self) -> dict[str, int]:
        return {}  # one decode path: nothing to count

    def memory_mib(self) -> dict[str, float]:
        mx = self._mx
        return {
            "active": round(mx.get_active_memory() / _MB, 1),
            "peak": round(mx.get_peak_memory() / _MB, 1),
            "cache": round(mx.get_cache_memory() / _MB, 1),
        }

    def info(self) -> dict[str, Any]:
        return {
            "device": str(self._mx.default_device()),
            "dtype": self.dtype_name,
            "memory_mb": self.memory_mib(),
        }


_SPECIAL_PIECE = re.compile(r"<\|[a-z_0-9]+\|>")


@dataclass(frozen=True)
class _Vocabulary:
    """A tokenizer's vocabulary read backwards once: each id's entry, the
    ``<asr_text>`` id and the special tokens' ids (scored tokens skip them)."""

    pieces: dict[int, str]
    marker: int
    special: frozenset[int]
    tokenizer: Any

    @classmethod
    def of(cls, tokenizer: Any) -> _Vocabulary:
        known = _VOCABULARIES.get(tokenizer)
        if known is None:
            vocab = tokenizer._tokenizer.get_vocab()
            pieces = {token_id: piece for piece, token_id in vocab.items()}
            special = frozenset(i for i, piece in pieces.items() if _SPECIAL_PIECE.fullmatch(piece))
            known = _VOCABULARIES[tokenizer] = cls(pieces, vocab[ASR_TEXT], special, tokenizer)
        return known

    def piece(self, token: int) -> str:
        return self.pieces.get(token, "")

    def text(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))


_VOCABULARIES: weakref.WeakKeyDictionary[Any, _Vocabulary] = weakref.WeakKeyDictionary()
