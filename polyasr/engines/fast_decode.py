"""Greedy Qwen3-ASR decoding over a static KV cache, replayed as a CUDA graph.

transformers' ``generate`` costs about 25 ms per token on an H200 whatever the
model size: each step is hundreds of small kernel launches plus Python around
them. This loop keeps everything a step touches in preallocated buffers (the
KV cache, the token, the positions, the attention mask, the per-clip budgets
and the done flags), so on a CUDA device the whole step is captured once per
batch bucket (and attention span) at load time and replayed with a single
launch.

The model's own modules do the work: the prompt (audio encoder, placeholder
merge, multimodal rotary positions) is prefilled by the thinker's ``forward``
exactly as ``generate`` does it, and every step calls the thinker's embedding,
rotary embedding, decoder layers, norm and head. Only the cache is ours. On
the CPU the same loop runs without graphs and attends over exactly the
positions ``generate`` would, so both paths pick the same tokens (the CI test
``tests/engine/test_fast_decode.py`` holds them to that).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("polyasr.fast_decode")

#: Batch sizes a step is captured for; a batch runs in the smallest that holds it.
BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: Cache positions for the prompt: a 30 s piece is ~390 audio tokens, plus the
#: chat template, the context and a rolled-back previous answer.
PROMPT_TOKENS = 1024
#: Attention spans a graph is captured for, as fractions of the cache: a step
#: reads the whole span of the KV cache, so short prompts (dictation) use a
#: short span.
SPAN_FRACTIONS: tuple[int, ...] = (4, 2, 1)
#: Steps between checks whether every clip has finished: each check waits for
#: the device, so checking every step would stall the launch queue.
DONE_CHECK_EVERY = 8
#: Where torch.compile keeps its artifacts, so a reload after an idle eviction
#: does not compile again.
COMPILE_CACHE = Path.home() / ".cache" / "polyasr" / "inductor"

#: generate's stop tokens for Qwen3-ASR (<|im_end|>, <|endoftext|>); the second also pads.
EOS_IDS: tuple[int, ...] = (151645, 151643)

Tensor = torch.Tensor


class DoesNotFit(ValueError):
    """The batch needs more cache positions or rows than were allocated."""


class _StaticCache:
    """What a decoder layer's attention calls ``update`` on during one step.

    Writes the step's key and value at cache position ``slot`` (a device
    tensor, so a captured graph advances it without the host) and returns the
    first ``length`` positions of the first ``batch`` rows.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], slot: Tensor, batch: int, length: int):
        self.keys, self.values, self.slot = keys, values, slot
        self.batch, self.length = batch, length

    def update(
        self, key: Tensor, value: Tensor, layer_idx: int, *_args: Any, **_kw: Any
    ) -> tuple[Tensor, Tensor]:
        k = self.keys[layer_idx][: self.batch]
        v = self.values[layer_idx][: self.batch]
        k.index_copy_(2, self.slot, key)
        v.index_copy_(2, self.slot, value)
        return k[:, :, : self.length], v[:, :, : self.length]


class FastDecoder:
    """A greedy decode loop bound to one loaded transformers ``Qwen3ASRModel``.

    ``graphs`` captures one CUDA graph per bucket and span (CUDA only); ``compile``
    runs the step through ``torch.compile`` first. Buffers are sized for the
    largest bucket and ``prompt_tokens + max_new_tokens`` positions; a batch
    that does not fit raises :class:`DoesNotFit` (the engine then falls back
    to ``generate``). Dropping the decoder frees its cache and graph pool.
    """

    def __init__(
        self,
        asr_model: Any,
        *,
        max_new_tokens: int,
        graphs: bool,
        compile: bool,
        buckets: tuple[int, ...] = BUCKETS,
        prompt_tokens: int = PROMPT_TOKENS,
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
        self.buckets = buckets
        self.max_batch = buckets[-1]
        self.max_new_tokens = max_new_tokens
        self.capacity = prompt_tokens + max_new_tokens
        self.spans = tuple(sorted({self.capacity // f for f in SPAN_FRACTIONS}))
        self.graphs = graphs
        self.compiled = compile
        self._warn_unless_greedy(asr_model.model.generation_config)

        device, dtype = self.embed.weight.device, self.embed.weight.dtype
        rows, cap = self.max_batch, self.capacity
        head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        shape = (rows, cfg.num_key_value_heads, cap, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]

        def longs(*size: int) -> Tensor:
            return torch.zeros(size, dtype=torch.long, device=device)

        self.valid = torch.zeros(rows, cap, dtype=torch.bool, device=device)
        self.tokens, self.positions, self.count, self.budget = (
            longs(rows),
            longs(rows),
            longs(rows),
            longs(rows),
        )
        self.done = torch.ones(rows, dtype=torch.bool, device=device)
        self.out = longs(rows, max_new_tokens)
        self.slot, self.step_idx = longs(1), longs(1)
        self.eos = torch.tensor(EOS_IDS, device=device)
        self.pad = EOS_IDS[1]

        self._step_fn: Callable[[int, int], None] = self._step
        if compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE))
            self._step_fn = torch.compile(self._step)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if graphs:
            self._capture()

    @staticmethod
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

    # -- the step ----------------------------------------------------------

    def _step(self, batch: int, length: int) -> None:
        """One token for rows ``[:batch]``, attending over positions ``[:length]``.

        Reads and writes only the buffers, so it can be captured and replayed.
        """
        valid = self.valid[:batch]
        valid.index_fill_(1, self.slot, True)
        hidden = self.embed(self.tokens[:batch, None])
        # Text tokens carry the same position on all three rotary axes.
        positions = self.positions[:batch].view(1, batch, 1).expand(3, batch, 1)
        rotary = self.rotary(hidden, positions)
        mask = valid[:, None, None, :length]
        cache = _StaticCache(self.keys, self.values, self.slot, batch, length)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=rotary,
                past_key_values=cache,
                cache_position=self.slot,
            )
        logits = self.head(self.norm(hidden)[:, -1]).float()
        done = self.done[:batch]
        token = torch.where(done, self.pad, logits.argmax(-1))
        self.out[:batch].index_copy_(1, self.step_idx, token[:, None])
        count = self.count[:batch]
        count += (~done).long()
        done |= (token[:, None] == self.eos).any(-1) | (count >= self.budget[:batch])
        self.tokens[:batch].copy_(token)
        self.positions[:batch] += 1
        self.slot += 1
        self.step_idx += 1

    @torch.inference_mode()
    def _capture(self) -> None:
        """One graph per bucket and span, largest first, all in one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for batch in sorted(self.buckets, reverse=True):
            for span in sorted(self.spans, reverse=True):
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm-up: kernels chosen, compile done, before capture
                        self._reset_idle()
                        self._step_fn(batch, span)
                torch.cuda.current_stream().wait_stream(stream)
                self._reset_idle()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._step_fn(batch, span)
                self._graphs[(batch, span)] = graph
        self._reset_idle()
        torch.cuda.synchronize()

    def _reset_idle(self) -> None:
        """Every row finished, one visible position: a step on it is harmless."""
        self.done.fill_(True)
        self.valid.zero_()
        self.valid[:, 0] = True
        self.slot.fill_(1)
        self.step_idx.fill_(1)
        self.positions.zero_()

    # -- one batch ---------------------------------------------------------

    def bucket(self, n: int) -> int:
        """Rows a batch of ``n`` runs in: the smallest bucket that holds it, with
        or without graphs, so the CPU runs the padding rows the GPU runs."""
        return next(b for b in self.buckets if b >= n)

    def fits(self, n: int, prompt_len: int, budget: int) -> bool:
        return n <= self.max_batch and prompt_len + budget <= self.capacity and budget <= self.max_new_tokens

    @torch.inference_mode()
    def decode(
        self, inputs: Any, budgets: list[int], should_stop: Callable[[], bool] | None = None
    ) -> list[list[int]] | None:
        """Generated token ids per clip (EOS included, as ``generate`` has them),
        each cut at its own budget; ``None`` when ``should_stop`` said to yield.

        ``inputs`` is the processor's left-padded batch, on the model's device.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n, prompt_len = ids.shape
        longest = max(budgets)
        if not self.fits(n, prompt_len, longest):
            raise DoesNotFit(f"batch {n} x {prompt_len}+{longest} tokens")
        rows = self.bucket(n)
        span = next(s for s in self.spans if s >= prompt_len + longest)
        first = self._prefill(inputs, rows)
        self.tokens[:n] = first
        self.out[:n, 0] = first
        self.budget[:n] = torch.tensor(budgets, device=ids.device)
        self.count[:n] = 1
        self.done[:n] = (first[:, None] == self.eos).any(-1) | (self.count[:n] >= self.budget[:n])
        self.positions[:n] = mask.sum(-1)  # left padding: row i continues at its own length
        self.slot.fill_(prompt_len)
        self.step_idx.fill_(1)
        for t in range(longest - 1):
            if should_stop is not None and should_stop():
                return None
            if self.graphs:
                self._graphs[(rows, span)].replay()
            else:  # eager: attend over exactly the filled positions, as generate does
                self._step_fn(rows, span if self.compiled else prompt_len + t + 1)
            if (t + 1) % DONE_CHECK_EVERY == 0 and bool(self.done[:rows].all()):
                break
        counts = self.count[:n].tolist()
        return [row[:c] for row, c in zip(self.out[:n].tolist(), counts, strict=True)]

    def _prefill(self, inputs: Any, rows: int) -> Tensor:
        """The prompt through the thinker's own forward (as ``generate``'s first
        step), its cache copied into ours; returns each clip's first token."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n, prompt_len = ids.shape
        out = self.thinker(
            **inputs,
            use_cache=True,
            cache_position=torch.arange(prompt_len, device=ids.device),
        )
        cache = out.past_key_values
        for i, layer in enumerate(cache.layers):
            self.keys[i][:n, :, :prompt_len].copy_(layer.keys)
            self.values[i][:n, :, :prompt_len].copy_(layer.values)
        self.valid[:rows].zero_()
        self.valid[:n, :prompt_len] = mask.bool()
        self.valid[n:rows, 0] = True  # padding rows of a bucket: one visible position, never read
        self.done[n:rows] = True
        self.positions[n:rows] = 0
        return out.logits[:, -1].float().argmax(-1)
