"""Worker threads by kind of work, so batch work cannot starve live dictation.

Blocking work leaves the event loop for a thread. Sharing asyncio's default
pool let six long uploads occupy every worker while a live dictation's VAD
windows waited behind them, and each frame's next ack with them. So the work
is split by who waits for it:

* :data:`LIVE` — the dictation path (Silero windows, speaker checks of live
  sessions): short calls a user is waiting on, never queued behind an upload.
* :data:`BATCH` — work whose size a client chooses (decoding uploads and
  manifest files, planning alignment chunks, FLAC encoding of archives),
  bounded by ``POLYASR_BATCH_THREADS`` so that it leaves cores for the rest.
  Beyond that many, batch work waits its turn instead of taking a thread.

Anything else that blocks briefly (weights checks, model preflight) stays on
asyncio's default pool, so neither kind can hold it up.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def default_batch_threads() -> int:
    """Half the cores (at least one): batch work never holds them all."""
    return max(1, (os.cpu_count() or 2) // 2)


def default_live_threads() -> int:
    """A little over the cores: live calls are short and mostly in native code."""
    return min(16, (os.cpu_count() or 2) + 2)


class Pool:
    """A named, bounded thread pool, created on first use and resizable before it."""

    def __init__(self, name: str, size: Callable[[], int]) -> None:
        self.name = name
        self._size = size
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self._size()

    def resize(self, workers: int) -> None:
        """Use ``workers`` threads from now on; work already running finishes on the old pool."""
        with self._lock:
            if workers == self._size():
                return
            old, self._executor = self._executor, None
            self._size = lambda: workers
        if old is not None:
            old.shutdown(wait=False)

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._size(), thread_name_prefix=f"polyasr-{self.name}")
            return self._executor

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on this pool, as :func:`asyncio.to_thread` runs it on the default one."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._get(), call)


LIVE = Pool("live", default_live_threads)
BATCH = Pool("batch", default_batch_threads)
