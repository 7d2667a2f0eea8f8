"""CUDA graph capture and replay of the fast decoder's step, on the model's device.

A process may hold models on several GPUs (``POLYASR_DEVICE=cuda:1``), and
the current device of a thread is not the model's: every stream, memory pool
and synchronisation here names the device explicitly. Capture uses
thread-local capture mode, so another unit's thread using the GPU meanwhile
cannot invalidate it (the engine also keeps the other units off the device
while it captures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import torch

#: Warm-up runs of a step before it is captured: kernels chosen, compile done.
WARMUP_STEPS = 3


class GraphCapture(Protocol):
    """What the decoder needs to capture and replay its step (CUDA graphs, or a stand-in)."""

    def capture(self, step: Callable[[], None], reset: Callable[[], None]) -> Callable[[], None]:
        """Capture ``step`` (after warming it up, ``reset`` before each run); returns its replay."""

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        """Make the model's device this thread's current one for the block."""


class CudaGraphs:
    """CUDA graph capture and replay on the model's device, not the current
    one; all graphs of one decoder share one memory pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        with torch.cuda.device(device):
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device=device)

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.device(self.device)

    def capture(self, step: Callable[[], None], reset: Callable[[], None]) -> Callable[[], None]:
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                for _ in range(WARMUP_STEPS):
                    reset()
                    step()
            current.wait_stream(self.stream)
            reset()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(
                graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"
            ):
                step()
            torch.cuda.synchronize(self.device)
        return graph.replay
