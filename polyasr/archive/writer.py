"""One background thread that does every archive write in order, so a slow disk never
blocks the event loop and lines of one connection never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("polyasr.archive")


class _Writer:
    """One thread that does every connection's archive writes, in submission order.

    One shared thread rather than one per connection: a frame is a few KB
    appended to a page-cache file (microseconds), so a single thread keeps up
    with hundreds of live dictations, costs one thread whatever
    ``MAX_SESSIONS`` is, and one FIFO gives each connection's events and audio
    the order they were logged in. The slow part, FLAC encoding at close, runs
    in the closing caller's thread, so it never holds up other connections' acks.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; it must not raise (failures are the job's to log)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="polyasr-archive", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def call(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` after everything queued before it; blocks the calling thread."""
        done = threading.Event()
        result: list[Any] = [None]

        def run() -> None:
            try:
                result[0] = job()
            finally:
                done.set()

        self.submit(run)
        done.wait()
        return result[0]

    async def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` after everything queued before it; resolves once it has run.

        The job runs even if the awaiting task is cancelled: a frame the
        session has accepted is archived whether or not its ack goes out.
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not finished.done():
                finished.set_result(None)

        def run() -> None:
            try:
                job()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                    loop.call_soon_threadsafe(resolve)

        self.submit(run)
        await finished

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:
                log.exception("archive write failed")


WRITER = _Writer()
