"""Greedy Qwen3-ASR decoding on MLX that scores its tokens and guards against loops.

mlx-qwen3-asr's ``generate_with_info`` returns token ids only, and stops on
its own repetition test, which also ends honest speech (a ten-token phrase
said twice). This loop makes the same calls in the same order (the model's
``prefill`` over prompt and audio, then one ``step`` per token at the next
position, the cache materialised every step, argmax over the logits), so a
decode the guard leaves alone gives exactly the library's tokens; besides
each token it keeps the token's log-softmax, stops at the first repetition
loop of :mod:`polyasr.core.loops`, and, for the guarded retry, bans starting
the cut loop's span again right after itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from polyasr.core.loops import LoopWatch, banned_next

#: The stop tokens mlx-qwen3-asr hard-codes (<|endoftext|>, <|im_end|>).
EOS_IDS: tuple[int, ...] = (151643, 151645)


@dataclass(frozen=True)
class Greedy:
    """One decode: the new ids (stop token left out), their log-probabilities,
    and whether it ended with its stop token (else it ran out of budget or
    stopped at a loop)."""

    ids: list[int]
    logprobs: list[float]
    ended: bool


def greedy(
    model: Any,
    input_ids: mx.array,
    audio_features: mx.array,
    budget: int,
    *,
    watch: bool,
    ban: tuple[int, ...] = (),
) -> Greedy:
    """Up to ``budget`` new tokens after ``input_ids`` (prompt, audio
    placeholders, answer prefix); ``ban`` is a cut loop's span, never started
    again right after itself (the guarded retry)."""
    length = int(input_ids.shape[1])
    positions = mx.arange(length)[None, :]
    position_ids = mx.stack([positions, positions, positions], axis=1)
    cache = model.create_cache(max_seq_len=length + budget)
    logits = model.prefill(
        input_ids=input_ids, audio_features=audio_features, position_ids=position_ids, cache=cache
    )
    ids: list[int] = []
    logprobs: list[float] = []
    loops = LoopWatch()
    for step in range(budget):
        if step:
            logits = model.step(
                input_ids=mx.array([[ids[-1]]]),
                position_ids=mx.full((1, 3, 1), length + step - 1, dtype=position_ids.dtype),
                cache=cache,
                validate_input_ids=False,
            )
            mx.eval([c for c in (*cache.keys, *cache.values) if c is not None])
        row = logits.reshape(-1)
        chosen = row
        if (banned := banned_next(ids, ban)) is not None:
            chosen = row.at[banned].add(-mx.inf)
        token = mx.argmax(chosen)
        scored = row.astype(mx.float32)
        logprob = scored[token] - mx.logsumexp(scored)
        mx.eval(token, logprob)
        if int(token.item()) in EOS_IDS:
            return Greedy(ids, logprobs, ended=True)
        ids.append(int(token.item()))
        logprobs.append(float(logprob.item()))
        if watch and loops.push(ids[-1]) is not None:
            return Greedy(ids, logprobs, ended=False)
    return Greedy(ids, logprobs, ended=False)
