"""The engine seam: the one interface between the shared service and a backend.

An engine is the only code that imports MLX or torch. The service hands it
plain data (16 kHz mono float32 clips with their language, context and token
budget) and gets plain data back, so every rule a client can observe is written
once, outside the engines, and tested against both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from polyasr.core.constants import SAMPLE_RATE

UNITS: tuple[str, ...] = ("asr", "align")


@dataclass(frozen=True)
class Clip:
    """One decode request: audio plus everything that steers the decode."""

    samples: np.ndarray  # 16 kHz mono float32
    language: str | None = None  # Qwen name, None = auto-detect
    context: str = ""
    max_new_tokens: int = 256
    # Raw text the answer continues from (a previous hypothesis of the same
    # audio, in the engine's own raw form); the engine rolls back its last few
    # tokens and generates only the rest. Engines without prefix support
    # decode the clip from scratch.
    prefix: str = ""

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class TokenScore:
    """One generated token of the answer text with the model's confidence in it.

    ``bytes`` is authoritative: a character outside ASCII may span several
    byte-level tokens, so one token's ``text`` can be a partial character.
    """

    text: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None = None  # Qwen name detected (or pinned), if any
    raw: str = ""  # the engine's raw answer, usable as a later clip's prefix
    # The scored tokens of the generated part of ``text`` (after the format
    # markers), in order; empty where the engine cannot score a decode. With
    # an answer prefix (``Clip.prefix``, a dictation partial) they cover only
    # what this decode generated, not the prefix it continued. ``logprob`` is
    # the model's own log-probability of the greedy choice, also where the
    # loop guard's retry banned another token.
    tokens: tuple[TokenScore, ...] = ()
    # The repetition-loop guard acted on this decode: its looping tail was cut
    # (its text then holds one occurrence of the loop, or the guarded retry's
    # answer when that one ended).
    loop_cut: bool = False


# Tokens of a previous hypothesis left unfixed when it is fed back as the
# answer prefix (the Qwen3-ASR streaming recipe rolls back about five).
ROLLBACK_TOKENS = 5


def rolled_back_ids(ids: list[int], decode: Callable[[list[int]], str], prefix: str) -> list[int]:
    """``ids`` (the tokens of ``prefix``) minus the last ``ROLLBACK_TOKENS``:
    the words at the boundary may still change.

    A character outside ASCII may span several byte-level tokens, so the cut
    backs off until the kept ids decode to an exact start of ``prefix``: the
    answer never continues from half a character.
    """
    end = max(0, len(ids) - ROLLBACK_TOKENS)
    while end and not prefix.startswith(decode(ids[:end])):
        end -= 1
    return ids[:end]


class Preempted(RuntimeError):
    """A preemptible decode stopped early because more urgent work was waiting."""


@dataclass(frozen=True)
class AlignedUnit:
    """One timed unit of text: a word for space-delimited scripts, a character
    (or a tokenizer word for Japanese/Korean) for CJK. Times in seconds."""

    text: str
    start: float
    end: float


class Engine(Protocol):
    """What a backend provides. Calls run on the unit's worker thread."""

    backend: str  # "mlx" | "cuda"
    model_id: str  # the ASR model (id or local dir)
    aligner_id: str  # the forced aligner (id or local dir)
    # Replace a chunk's segments by one whole-chunk segment when grouping
    # covers too little of its text (the MLX backend's safety net).
    align_coverage_fallback: bool
    # Most clips one ``transcribe`` call should get: the scheduler batches up to this.
    max_batch: int

    def load(self, unit: str) -> Any:
        """Load ``unit`` ("asr" or "align") and return the live model object."""

    def empty_cache(self) -> None:
        """Return freed accelerator memory to the device (after an eviction)."""

    def transcribe(
        self, model: Any, clips: list[Clip], should_stop: Callable[[], bool] | None = None
    ) -> list[Transcript]:
        """Decode a batch of clips with the asr unit's model, one result per clip.

        When ``should_stop`` is given the engine may poll it while generating and
        raise :class:`Preempted` once it returns true (engines whose library
        offers no hook between tokens simply run to the end)."""

    def align(self, model: Any, clip: Clip, text: str, language: str) -> list[AlignedUnit]:
        """Time ``text`` against ``clip`` with the align unit's forced aligner.

        ``language`` is one of the aligner's languages (it picks the word
        splitter). Times are raw aligner output: not clamped, possibly past
        the end of the clip.
        """

    def info(self) -> dict[str, Any]:
        """Backend facts for /health: ``device``, ``dtype`` and the memory block."""

    def counters(self) -> dict[str, int]:
        """Decode events the engine counts since start, by name, for ``/metrics``
        (CUDA: clips too long for the fast loop's static cache)."""

    def memory_mib(self) -> dict[str, float]:
        """Accelerator memory now, in MiB, by kind: MLX ``active``, ``peak`` and
        ``cache``; CUDA ``allocated`` and ``reserved`` (empty on the CPU). The
        one source of both ``/health``'s memory block and the metrics."""

    # Native streaming (the library's own incremental decoder), when
    # ``supports_native_streaming`` is true for this engine's configuration.
    supports_native_streaming: bool

    def stream_open(self, model: Any, *, context: str, language: str | None, chunk_sec: float) -> Any:
        """A new native stream state for one utterance."""

    def stream_feed(self, model: Any, state: Any, samples: np.ndarray) -> tuple[Any, str]:
        """Feed audio; returns the state and the running hypothesis."""

    def stream_finish(self, model: Any, state: Any) -> str:
        """Seal the stream; returns its final text."""
