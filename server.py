"""polyasr on Apple Silicon / MLX (port 8765): the MLX engine and the entry point.

This file is the only place that knows MLX. The ``asr`` unit is an
mlx-qwen3-asr ``Session``; the ``align`` unit is mlx-audio's
Qwen3-ForcedAligner. Everything a client observes comes from the shared app
factory. On Linux the CPU build of MLX runs the same code (that is how the
test suite exercises this engine without a Mac).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from polyasr_config import Settings  # noqa: E402
from polyasr_engine import Clip, Transcript  # noqa: E402

_MB = 1_048_576


class MlxEngine:
    """mlx-qwen3-asr for transcription, mlx-audio for forced alignment."""

    backend = "mlx"

    def __init__(self, settings: Settings) -> None:
        import mlx.core as mx

        self._mx = mx
        self.model_id = settings.model
        self.aligner_id = settings.aligner_model
        self.dtype_name = settings.dtype
        self.dtype = getattr(mx, settings.dtype)
        self.stream_max_context_sec = settings.stream_max_context_sec
        self.stream_finalization_mode = settings.stream_finalization_mode

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
        return state, state.text.strip()

    def stream_finish(self, model: Any, state: Any) -> str:
        return model.finish_streaming(state).text.strip()

    def load(self, unit: str) -> Any:
        if unit == "align":
            from mlx_audio.stt.utils import load_model

            return load_model(self.aligner_id)
        from mlx_qwen3_asr import Session

        return Session(self.model_id, dtype=self.dtype)

    def empty_cache(self) -> None:
        self._mx.clear_cache()

    def transcribe(
        self, model: Any, clips: list[Clip], should_stop: Callable[[], bool] | None = None
    ) -> list[Transcript]:
        """Decode clip by clip: MLX gains little from padding a batch on one
        device. mlx-qwen3-asr offers no hook between tokens, so ``should_stop``
        is not polled: a partial runs to its (small) token budget."""
        results = []
        for clip in clips:
            out = model.transcribe(
                clip.samples,
                context=clip.context,
                language=clip.language,
                max_new_tokens=clip.max_new_tokens,
            )
            language = (out.language or "").split(",")[0].strip()
            language = None if language in ("", "unknown") else language
            results.append(Transcript(text=out.text.strip(), language=language))
        return results

    def info(self) -> dict[str, Any]:
        mx = self._mx
        return {
            "device": str(mx.default_device()),
            "dtype": self.dtype_name,
            "memory_mb": {
                "active": round(mx.get_active_memory() / _MB, 1),
                "peak": round(mx.get_peak_memory() / _MB, 1),
                "cache": round(mx.get_cache_memory() / _MB, 1),
            },
        }


def main() -> None:
    from polyasr_app import serve

    serve("mlx", MlxEngine, base_dir=REPO)


if __name__ == "__main__":
    main()
