"""Greedy Qwen3-ASR decoding over a static KV cache, replayed as CUDA graphs.

transformers' ``generate`` costs about 25 ms per token on an H200 whatever the
model size: each step is hundreds of small kernel launches plus Python around
them. This loop keeps everything a step touches in preallocated buffers (the
KV cache, the token, the positions, the additive attention mask, the per-clip
budgets and the done flags), so on a CUDA device the whole step is captured
once per batch bucket and attention span at load time and replayed with a
single launch.

The model's own modules do the work: the prompt (audio encoder, placeholder
merge, multimodal rotary positions) is prefilled by the thinker's ``forward``
exactly as ``generate`` does it, except that only the last position goes
through the vocabulary head; every step calls the thinker's embedding, rotary
embedding, norms, projections, MLPs and head. Only the cache and the step's
attention call are ours: grouped-query attention without copying K/V (the
query heads that share a key/value head are that head's query positions) and
an additive float mask, so SDPA keeps its fused kernels. The span a step
attends over grows with the position, in steps of :data:`SPAN_STEP`, so a
short dictation never reads the whole cache. On the CPU the same loop runs
without graphs over exactly the positions ``generate`` would, so both paths
pick the same tokens (``tests/engine/test_fast_decode.py`` holds them to that).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from polyasr.core.loops import LoopWatch
from polyasr.engines.cuda_graphs import GraphCapture

log = logging.getLogger("polyasr.fast_decode")

#: Attention spans are multiples of this many cache positions (the last one is
#: the whole cache): a step reads the smallest span that holds its position.
SPAN_STEP = 128
#: Where torch.compile keeps its artifacts, so a reload after an idle eviction
#: does not compile again.
COMPILE_CACHE = Path.home() / ".cache" / "polyasr" / "inductor"

#: generate's stop tokens for Qwen3-ASR (<|im_end|>, <|endoftext|>); the second also pads.
EOS_IDS: tuple[int, ...] = (151645, 151643)

#: Steps between two looks at the generated tokens for a repetition loop: the
#: host reads the new columns then (one small copy), not at every step.
WATCH_EVERY = 8

Tensor = torch.Tensor


@dataclass(frozen=True)
class Generated:
    """One clip's new token ids (through its stop token, as ``generate`` has
    them), each one's natural-log probability under the greedy decode, and
    whether the loop guard cut them (``span``: the looping span it cut, for
    the guarded retry)."""

    ids: list[int]
    logprobs: list[float]
    loop_cut: bool = False
    span: tuple[int, ...] = ()


def chosen_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """The log-softmax of each row's chosen token (float32 logits)."""
    return (logits.gather(-1, tokens[:, None]) - logits.logsumexp(-1, keepdim=True))[:, 0]


def buckets_for(rows: int) -> tuple[int, ...]:
    """Batch sizes a step is captured for, up to ``rows``: powers of two to 8,
    then multiples of 8, so a batch of 17 pays for 24 rows, not 32."""
    sizes = {b for b in (1, 2, 4, 8) if b < rows} | set(range(16, rows, 8)) | {rows}
    return tuple(sorted(sizes))


def spans_for(positions: int) -> tuple[int, ...]:
    """Attention spans up to ``positions``: every :data:`SPAN_STEP`, and the whole cache."""
    return (*range(SPAN_STEP, positions, SPAN_STEP), positions)


def cache_bytes(config: Any, rows: int, positions: int, dtype: torch.dtype) -> int:
    """Bytes of the static K/V cache for a text config of the thinker."""
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    return per_position * rows * positions * torch.empty((), dtype=dtype).element_size()


class DoesNotFit(ValueError):
    """The batch needs more cache positions or rows than were allocated."""


def _last_position_only(_module: Any, _args: Any, output: Any) -> Any:
    """Forward hook on the thinker's text model: the vocabulary head needs only
    the last position (full-vocabulary logits for a whole prompt batch are GBs)."""
    output.last_hidden_state = output.last_hidden_state[:, -1:]
    return output


def _warn_unless_greedy(config: Any) -> None:
    """The loop is plain greedy: say so if the checkpoint asks for more."""
    extras = {
        name: getattr(config, name, None)
        for name in ("do_sample", "repetition_penalty", "no_repeat_ngram_size", "num_beams")
    }
    if (
        extras["do_sample"]
        or (extras["repetition_penalty"] or 1.0) != 1.0
        or (extras["no_repeat_ngram_size"] or 0)
        or (extras["num_beams"] or 1) > 1
    ):
        log.warning("fast decode is greedy; the generation config asks for %s", extras)


class StepState:
    """Everything a step reads and writes, allocated once for ``rows`` clips of
    ``positions`` cache positions: the KV cache, the additive attention mask
    (0 where a position may be read), each row's token, rotary position,
    count, budget and done flag, the generated ids with their log-probabilities,
    and the cache slot."""

    def __init__(
        self,
        rows: int,
        positions: int,
        layout: tuple[int, int, int],
        max_new_tokens: int,
        like: Tensor,
    ) -> None:
        layers, kv_heads, head_dim = layout
        device, dtype = like.device, like.dtype
        shape = (rows, kv_heads, positions, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

        def longs(*size: int) -> Tensor:
            return torch.zeros(size, dtype=torch.long, device=device)

        self.masked_out = torch.finfo(dtype).min  # what a masked position adds to its score
        self.bias = torch.full((rows, positions), self.masked_out, dtype=dtype, device=device)
        self.tokens, self.positions, self.count, self.budget = (longs(rows) for _ in range(4))
        self.done = torch.ones(rows, dtype=torch.bool, device=device)
        self.finished = torch.ones((), dtype=torch.bool, device=device)
        self.out = longs(rows, max_new_tokens)
        self.scores = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
        self.slot, self.step_idx = longs(1), longs(1)
        self.eos = torch.tensor(EOS_IDS, device=device)
        self.pad = EOS_IDS[1]

    def start(self, first: Tensor, first_scores: Tensor, budgets: list[int], mask: Tensor, rows: int) -> None:
        """A batch of ``len(budgets)`` clips (left-padded prompts, ``mask``)
        whose prompt is in the cache and whose first tokens are ``first``
        (with their log-probabilities ``first_scores``); rows
        up to ``rows`` are the bucket's padding: done, one visible position."""
        n, prompt_len = mask.shape
        self.bias[:rows].fill_(self.masked_out)
        self.bias[:n, :prompt_len].masked_fill_(mask.bool(), 0.0)
        self.bias[n:rows, 0] = 0.0
        self.tokens[:n] = first
        self.out[:n, 0] = first
        self.scores[:n, 0] = first_scores
        self.budget[:n] = torch.tensor(budgets, device=first.device)
        self.count[:n] = 1
        self.done[:n] = (first[:, None] == self.eos).any(-1) | (self.count[:n] >= self.budget[:n])
        self.done[n:rows] = True
        self.finished.copy_(self.done[:rows].all())
        self.positions[:n] = mask.sum(-1)  # left padding: row i continues at its own length
        self.positions[n:rows] = 0
        self.slot.fill_(prompt_len)
        self.step_idx.fill_(1)

    def advance(self, batch: int, token: Tensor, score: Tensor) -> None:
        """Record one step's greedy ``token`` per row and its log-probability
        ``score`` (padding once a row is done)."""
        done = self.done[:batch]
        token = torch.where(done, self.pad, token)
        self.out[:batch].index_copy_(1, self.step_idx, token[:, None])
        self.scores[:batch].index_copy_(1, self.step_idx, score[:, None])
        count = self.count[:batch]
        count += (~done).long()
        done |= (token[:, None] == self.eos).any(-1) | (count >= self.budget[:batch])
        self.finished.copy_(done.all())
        self.tokens[:batch].copy_(token)
        self.positions[:batch] += 1
        self.slot += 1
        self.step_idx += 1

    def generated(self, n: int) -> list[Generated]:
        """Each clip's ids and their log-probabilities, cut at its count."""
        counts = self.count[:n].tolist()
        rows = zip(self.out[:n].tolist(), self.scores[:n].tolist(), counts, strict=True)
        return [Generated(ids[:c], scores[:c]) for ids, scores, c in rows]

    def stop_looping(self, watches: list[LoopWatch], seen: int, upto: int, batch: int) -> None:
        """Feed columns ``[seen, upto)`` to each row's loop watch (one small
        copy to the host); mark done the rows whose tail is a loop."""
        columns = self.out[: len(watches), seen:upto].tolist()
        looping = [
            row
            for row, (watch, tokens) in enumerate(zip(watches, columns, strict=True))
            if watch.loop is None and watch.extend(tokens) is not None
        ]
        if looping:
            self.done[looping] = True
            self.finished.copy_(self.done[:batch].all())

    def reset_idle(self) -> None:
        """Every row finished, one visible position: a step on it is harmless."""
        self.done.fill_(True)
        self.bias.fill_(self.masked_out)
        self.bias[:, 0] = 0.0
        self.slot.fill_(1)
        self.step_idx.fill_(1)
        self.positions.zero_()


class FastDecoder:
    """A greedy decode loop bound to one loaded transformers ``Qwen3ASRModel``.

    ``rows`` clips of ``positions`` cache positions each (prompt and answer)
    are allocated at once. ``graphs`` captures one graph per bucket and span;
    ``compile`` runs the step through ``torch.compile`` first (with dynamic
    shapes, so a cold compile costs a few compilations, not one per graph). A
    batch that does not fit raises :class:`DoesNotFit`. One thread at a time
    may decode: the buffers are the loop's state. Dropping the decoder frees
    its cache and graph pool.
    """

    def __init__(
        self,
        asr_model: Any,
        *,
        max_new_tokens: int,
        rows: int,
        positions: int,
        graphs: GraphCapture | None,
        compile: bool,
    ) -> None:
        thinker = asr_model.model.thinker
        text = thinker.model
        cfg = thinker.config.text_config
        self.thinker = thinker
        self.layers = list(text.layers)
        self.embed, self.rotary, self.norm, self.head = (
            text.embed_tokens,
            text.rotary_emb,
            text.norm,
            thinker.lm_head,
        )
        attention = self.layers[0].self_attn
        self.rope = inspect.getmodule(type(attention)).apply_rotary_pos_emb  # type: ignore[union-attr]
        self.head_dim = attention.head_dim
        self.kv_heads = cfg.num_key_value_heads
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.buckets = buckets_for(rows)
        self.max_batch = rows
        self.max_new_tokens = max_new_tokens
        self.capacity = positions
        self.spans = spans_for(positions)
        self.compiled = compile
        self._busy = threading.Lock()
        _warn_unless_greedy(asr_model.model.generation_config)

        self.state = StepState(
            rows,
            positions,
            (len(self.layers), self.kv_heads, self.head_dim),
            max_new_tokens,
            self.embed.weight,
        )
        self.cache_bytes = cache_bytes(cfg, rows, positions, self.embed.weight.dtype)

        self._step_fn: Callable[..., None] = self._step
        if compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE))
            self._step_fn = torch.compile(self._step, dynamic=True)
        self._capture = graphs
        self._graphs: dict[tuple[int, int], Callable[[], None]] = {}
        began = time.perf_counter()
        if graphs is not None:
            self._capture_all(graphs)
        elif compile:
            self._warm_compiled()
        if graphs is not None or compile:
            log.info(
                "fast decode ready in %.1f s: %d buckets x %d spans, %s%s",
                time.perf_counter() - began,
                len(self.buckets),
                len(self.spans),
                "graphs" if graphs is not None else "no graphs",
                ", compiled" if compile else "",
            )

    # -- the step ----------------------------------------------------------

    def _step(self, batch: int, length: int, masked: bool = True) -> None:
        """One token for rows ``[:batch]``, attending over positions ``[:length]``.

        Reads and writes only the buffers, so it can be captured and replayed.
        Without ``masked`` every row attends over all ``length`` positions (a
        batch with no padding, run at its exact length).
        """
        state = self.state
        bias = state.bias[:batch]
        bias.index_fill_(1, state.slot, 0.0)
        hidden = self.embed(state.tokens[:batch, None])
        # Text tokens carry the same position on all three rotary axes.
        positions = state.positions[:batch].view(1, batch, 1).expand(3, batch, 1)
        cos, sin = self.rotary(hidden, positions)
        mask = bias[:, None, None, :length] if masked else None
        for index, layer in enumerate(self.layers):
            hidden = self._layer(index, layer, hidden, (cos, sin), mask, length)
        logits = self.head(self.norm(hidden[:, -1])).float()
        token = logits.argmax(-1)
        state.advance(batch, token, chosen_logprobs(logits, token))

    def _layer(
        self,
        index: int,
        layer: Any,
        hidden: Tensor,
        rotary: tuple[Tensor, Tensor],
        mask: Tensor | None,
        length: int,
    ) -> Tensor:
        """One decoder layer, as the model's own forward runs it, over our cache.

        Grouped-query attention without copying K/V: a step has one query
        position per row, so the query heads that share a key/value head
        become that head's query positions, and SDPA reads the cache in place.
        """
        attn = layer.self_attn
        batch = hidden.shape[0]
        x = layer.input_layernorm(hidden)
        heads = (batch, 1, -1, self.head_dim)
        query = attn.q_norm(attn.q_proj(x).view(heads)).transpose(1, 2)
        key = attn.k_norm(attn.k_proj(x).view(heads)).transpose(1, 2)
        value = attn.v_proj(x).view(heads).transpose(1, 2)
        query, key = self.rope(query, key, *rotary)
        keys, values = self.state.keys[index][:batch], self.state.values[index][:batch]
        keys.index_copy_(2, self.state.slot, key)
        values.index_copy_(2, self.state.slot, value)
        grouped = query.reshape(batch, self.kv_heads, self.groups, self.head_dim)
        out = F.scaled_dot_product_attention(
            grouped, keys[:, :, :length], values[:, :, :length], attn_mask=mask, scale=attn.scaling
        )
        hidden = hidden + attn.o_proj(out.reshape(batch, 1, -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    @torch.inference_mode()
    def _capture_all(self, graphs: GraphCapture) -> None:
        """One graph per bucket and span, largest first, all in one memory pool."""
        for batch in sorted(self.buckets, reverse=True):
            for span in sorted(self.spans, reverse=True):

                def step(batch: int = batch, span: int = span) -> None:
                    self._step_fn(batch, span)

                self._graphs[(batch, span)] = graphs.capture(step, self.state.reset_idle)
        self.state.reset_idle()

    @torch.inference_mode()
    def _warm_compiled(self) -> None:
        """Without graphs, compile at load rather than in the first request:
        every bucket at the smallest and the largest span."""
        for batch in self.buckets:
            for span in (self.spans[0], self.spans[-1]):
                self.state.reset_idle()
                self._step_fn(batch, span)
        self.state.reset_idle()

    # -- one batch ---------------------------------------------------------

    def bucket(self, n: int) -> int:
        """Rows a batch of ``n`` runs in: the smallest bucket that holds it, with
        or without graphs, so the CPU runs the padding rows the GPU runs."""
        return next(b for b in self.buckets if b >= n)

    def span(self, length: int) -> int:
        """The smallest attention span that holds ``length`` positions."""
        return next(s for s in self.spans if s >= length)

    def fits(self, n: int, prompt_len: int, budget: int) -> bool:
        return n <= self.max_batch and prompt_len + budget <= self.capacity and budget <= self.max_new_tokens

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One decode at a time: a second thread would overwrite the buffers
        under the first (the scheduler never lets it; this makes sure)."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("the fast decoder is already decoding on another thread")
        try:
            with self._capture.on_device() if self._capture is not None else contextlib.nullcontext():
                yield
        finally:
            self._busy.release()

    @torch.inference_mode()
    def decode(
        self,
        inputs: Any,
        budgets: list[int],
        should_stop: Callable[[], bool] | None = None,
        watch: bool = False,
    ) -> list[Generated] | None:
        """Generated token ids per clip (EOS included, as ``generate`` has them)
        with their log-probabilities, each cut at its own budget; ``None`` when
        ``should_stop`` said to yield.

        ``inputs`` is the processor's left-padded batch, on the model's device.
        ``watch`` stops a looping row early (the caller cuts the loop itself).
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n, prompt_len = ids.shape
        longest = max(budgets)
        if not self.fits(n, prompt_len, longest):
            raise DoesNotFit(f"batch {n} x {prompt_len}+{longest} tokens")
        with self._exclusive():
            rows = self.bucket(n)
            # A batch with no padding at all (rows or positions) needs no mask when eager.
            masked = n < rows or not bool(mask.all())
            self.state.start(*self._prefill(inputs), budgets, mask, rows)
            watches = [LoopWatch() for _ in range(n)] if watch else []
            seen = 0
            for t in range(longest - 1):
                if should_stop is not None and should_stop():
                    return None
                if bool(self.state.finished):  # every step: a finished batch wastes no step
                    break
                self._advance(rows, prompt_len + t + 1, masked)
                if watches and (t + 1) % WATCH_EVERY == 0:
                    self.state.stop_looping(watches, seen, t + 2, rows)
                    seen = t + 2
            return self.state.generated(n)

    def _advance(self, rows: int, length: int, masked: bool) -> None:
        """One step over ``length`` positions: a graph replay, the compiled step
        over its span, or the eager step over exactly those positions."""
        if self._capture is not None:
            self._graphs[(rows, self.span(length))]()
        elif self.compiled:
            self._step_fn(rows, self.span(length))
        else:
            self._step_fn(rows, length, masked)

    def _prefill(self, inputs: Any) -> tuple[Tensor, Tensor]:
        """The prompt through the thinker's own forward (as ``generate``'s first
        step), its cache copied into ours; returns each clip's first token and
        its log-probability."""
        ids = inputs["input_ids"]
        n, prompt_len = ids.shape
        hook = self.thinker.model.register_forward_hook(_last_position_only)
        try:
            out = self.thinker(
                **inputs,
                use_cache=True,
                cache_position=torch.arange(prompt_len, device=ids.device),
            )
        finally:
            hook.remove()
        for i, layer in enumerate(out.past_key_values.layers):
            self.state.keys[i][:n, :, :prompt_len].copy_(layer.keys)
            self.state.values[i][:n, :, :prompt_len].copy_(layer.values)
        logits = out.logits[:, -1].float()
        first = logits.argmax(-1)
        return first, chosen_logprobs(logits, first)
