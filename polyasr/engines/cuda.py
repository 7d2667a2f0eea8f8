"""The CUDA engine: qwen-asr on torch (served by ``cuda/server.py`` on port 8766).

This module and its fast decode loop (:mod:`polyasr.engines.fast_decode`) are
the only places that know torch and qwen-asr; everything a client observes
comes from the shared app factory. The ``asr`` unit is qwen-asr's
``Qwen3ASRModel`` (transformers by default, vLLM with ``POLYASR_BACKEND=vllm``);
the ``align`` unit holds only the forced aligner and borrows the ``asr`` unit
for transcription, so co-residency never holds two copies of the ASR model.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from polyasr.core.answer import strip_format
from polyasr.core.config import ConfigError, Settings
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import AlignedUnit, Clip, Preempted, Transcript, rolled_back_ids
from polyasr.engines.cuda_decode import cut_loop, ended, generate_rows, transcript, vllm_rows
from polyasr.engines.cuda_graphs import CudaGraphs
from polyasr.engines.fast_decode import FastDecoder, Generated
from polyasr.engines.fast_path import FastPath, rows_of

_MB = 1_048_576


def _check_device(torch: Any, name: str) -> None:
    """Refuse at start-up a ``POLYASR_DEVICE`` that torch cannot parse or use,
    naming the variable, rather than failing at the first load."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"POLYASR_DEVICE={name!r} is not a device torch knows; use cuda, cuda:N or cpu"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"POLYASR_DEVICE={name} but no CUDA device is available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "set POLYASR_DEVICE=cpu to run on the CPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"POLYASR_DEVICE={name} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0"
            )
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):
            raise ConfigError(
                f"POLYASR_DEVICE={name} is not usable with this torch build ({torch.__version__}); "
                "use cuda, cuda:N or cpu"
            ) from None


class CudaEngine:
    """qwen-asr on torch, on ``POLYASR_DEVICE`` (a CUDA device or ``cpu``)."""

    backend = "cuda"
    align_coverage_fallback = False  # CUDA never had the net

    def __init__(self, settings: Settings) -> None:
        import torch

        self._torch = torch
        self.model_id = settings.model
        self.aligner_id = settings.aligner_model
        self.device = settings.device
        self.dtype_name = settings.dtype
        self.dtype = getattr(torch, settings.dtype)
        self.engine_backend = settings.engine_backend
        self.max_new_tokens = settings.max_new_tokens
        self.loop_guard = settings.loop_guard
        on_gpu = self.device.startswith("cuda")
        transformers = self.engine_backend == "transformers"
        # POLYASR_DECODE: our static-cache loop, or transformers' generate
        # (vLLM decodes in its own engine, which is neither).
        self.decode = (settings.decode or ("fast" if on_gpu else "generate")) if transformers else "generate"
        self.graphs = self.decode == "fast" and on_gpu
        self.compile = self.decode == "fast" and settings.compile
        self.decode_rows, self.decode_span = settings.decode_rows, settings.decode_span
        # The scheduler batches up to the static cache's rows.
        self.max_batch = self.decode_rows if self.decode == "fast" else 8
        self._fast = FastPath(self.decode_span)
        # Held while a step is captured, and by the other units' device work
        # (the aligner, emptying the cache): nothing else touches the GPU then.
        self._device_lock = threading.Lock()
        _check_device(torch, self.device)
        if self.engine_backend == "vllm":
            if importlib.util.find_spec("vllm") is None:
                raise ConfigError(
                    "POLYASR_BACKEND=vllm but vllm is not installed; "
                    'install it with: pip install "qwen-asr[vllm]"'
                )
            if not self.device.startswith("cuda"):
                raise ConfigError("POLYASR_BACKEND=vllm needs a CUDA device (POLYASR_DEVICE=cuda:N)")

    def load(self, unit: str) -> Any:
        from qwen_asr import Qwen3ASRModel, Qwen3ForcedAligner

        if unit == "align":
            with self._device_lock:
                return Qwen3ForcedAligner.from_pretrained(
                    self.aligner_id, dtype=self.dtype, device_map=self.device
                )
        if self.engine_backend == "vllm":
            return Qwen3ASRModel.LLM(
                model=self.model_id, max_new_tokens=self.max_new_tokens, dtype=self.dtype_name
            )
        model = Qwen3ASRModel.from_pretrained(
            self.model_id,
            dtype=self.dtype,
            device_map=self.device,
            max_new_tokens=self.max_new_tokens,
        )
        if self.decode == "fast":
            # Capture (and compile) now: the first decode after a load must not pay for it.
            with self._device_lock:
                self._fast.decoders[model] = FastDecoder(
                    model,
                    max_new_tokens=self.max_new_tokens,
                    rows=self.decode_rows,
                    positions=self.decode_span,
                    graphs=CudaGraphs(model.model.device) if self.graphs else None,
                    compile=self.compile,
                )
        warm = Clip(np.zeros(SAMPLE_RATE, np.float32), language="English", max_new_tokens=4)
        self.transcribe(model, [warm])  # first-call kernels and allocations, here rather than in a request
        return model

    @property
    def supports_native_streaming(self) -> bool:
        """qwen-asr streams only on its vLLM backend (it raises on transformers)."""
        return self.engine_backend == "vllm"

    def stream_open(self, model: Any, *, context: str, language: str | None, chunk_sec: float) -> Any:
        return model.init_streaming_state(context=context, language=language, chunk_size_sec=chunk_sec)

    def stream_feed(self, model: Any, state: Any, samples: Any) -> tuple[Any, str]:
        state = model.streaming_transcribe(samples, state)
        return state, strip_format(state.text)

    def stream_finish(self, model: Any, state: Any) -> str:
        return strip_format(model.finish_streaming_transcribe(state).text)

    def empty_cache(self) -> None:
        torch = self._torch
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            with self._device_lock, torch.cuda.device(self.device):
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()

    def transcribe(
        self, model: Any, clips: list[Clip], should_stop: Callable[[], bool] | None = None
    ) -> list[Transcript]:
        """One decode for the whole batch, each clip with its own prompt and budget.

        This is qwen-asr's own recipe (chat-template prompt, processor, greedy
        decode) with two additions its high-level ``transcribe`` cannot
        express: a clip's prompt may end with the start of the answer (a
        previous hypothesis minus its last tokens), so a streaming partial
        generates only the new words; and the repetition-loop guard. Each clip
        stops at its own token budget (proportional to its audio, so silence
        cannot run away) or at its end-of-answer token. The answer is read by
        the shared parser (:mod:`polyasr.core.answer`); ``tokens`` score only
        the generated words, never the answer prefix.
        """
        prefixes = [self._rolled_back(model, clip.prefix) for clip in clips]
        prompts = [
            model._build_text_prompt(context=clip.context, force_language=clip.language) + prefix
            for clip, prefix in zip(clips, prefixes, strict=True)
        ]
        wavs = [clip.samples for clip in clips]
        budgets = [clip.max_new_tokens for clip in clips]
        if model.backend == "vllm":
            generated = vllm_rows(model, prompts, wavs, max(budgets))
            generated = [cut_loop(row) for row in generated] if self.loop_guard else generated
        else:
            generated = self._decode_transformers(model, prompts, wavs, budgets, should_stop)
        tokenizer = model.processor.tokenizer
        return [
            transcript(tokenizer, clip, prefix, row)
            for clip, prefix, row in zip(clips, prefixes, generated, strict=True)
        ]

    @staticmethod
    def _rolled_back(model: Any, prefix: str) -> str:
        """``prefix`` minus its last tokens, as prompt text."""
        if not prefix:
            return ""
        tokenizer = model.processor.tokenizer

        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=False)

        ids = tokenizer.encode(prefix, add_special_tokens=False)
        return decode(rolled_back_ids(ids, decode, prefix))

    def _decode_transformers(
        self,
        model: Any,
        prompts: list[str],
        wavs: list[Any],
        budgets: list[int],
        should_stop: Callable[[], bool] | None,
    ) -> list[Generated]:
        """The batch decoded, looping tails cut; a cut clip is decoded once more
        on ``generate`` with the loop banned, kept if that ends its answer."""
        inputs = model.processor(text=prompts, audio=wavs, return_tensors="pt", padding=True)
        inputs = inputs.to(model.model.device).to(model.model.dtype)
        rows = self._fast.ids(model, inputs, budgets, should_stop, generate_rows, self.loop_guard)
        if rows is None:
            raise Preempted("a more urgent decode is waiting")
        if not self.loop_guard:
            return rows
        rows = [cut_loop(row) for row in rows]
        again = [i for i, row in enumerate(rows) if row.loop_cut]
        if again:
            part = rows_of(inputs, again)
            spans = [rows[i].span for i in again]
            retried = generate_rows(model, part, [budgets[i] for i in again], should_stop, ban=spans)
            if retried is None:
                raise Preempted("a more urgent decode is waiting")
            for i, row in zip(again, retried, strict=True):
                if ended(row):  # the answer ended: the retry holds
                    rows[i] = replace(row, loop_cut=True)
        return rows

    def generated_ids(
        self,
        model: Any,
        inputs: Any,
        budgets: list[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[int]]:
        """The new token ids per clip, by the decode path in effect (the fast
        loop, or ``generate`` when it is off), unguarded: every clip runs to
        its stop token or budget."""
        rows = self._fast.ids(model, inputs, budgets, should_stop, generate_rows)
        if rows is None:
            raise Preempted("a more urgent decode is waiting")
        return [row.ids for row in rows]

    def align(self, model: Any, clip: Clip, text: str, language: str) -> list[AlignedUnit]:
        with self._device_lock:
            (result,) = model.align(audio=(clip.samples, SAMPLE_RATE), text=text, language=language)
        return [AlignedUnit(item.text, item.start_time, item.end_time) for item in result]

    def _cuda_index(self) -> int | None:
        return self._torch.device(self.device).index if self.device.startswith("cuda") else None

    def memory_mib(self) -> dict[str, float]:
        torch = self._torch
        if not torch.cuda.is_available():
            return {}
        index = self._cuda_index()
        return {
            "allocated": round(torch.cuda.memory_allocated(index) / _MB, 1),
            "reserved": round(torch.cuda.memory_reserved(index) / _MB, 1),
        }

    def counters(self) -> dict[str, int]:
        return {"long_clip_on_generate": self._fast.long_clips}

    def info(self) -> dict[str, Any]:
        gpu: dict[str, Any] | None = None
        if self._torch.cuda.is_available():
            gpu = {"device": self._torch.cuda.get_device_name(self._cuda_index())}
            gpu.update({f"mem_{kind}_mb": mib for kind, mib in self.memory_mib().items()})
        return {
            "device": self.device,
            "dtype": self.dtype_name,
            "gpu": gpu,
            "decode": self.decode,
            "graphs": self.graphs,
            "compile": self.compile,
            "fast_decode": self._fast.info(self.decode_rows) if self.decode == "fast" else None,
        }
