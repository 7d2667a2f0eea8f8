"""What the CLI shows while it works: upload progress and live partials."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from tqdm import tqdm

from polyasr_client.http_api import ProgressCallback


@contextlib.asynccontextmanager
async def upload_progress(label: str, waiting: str) -> AsyncIterator[ProgressCallback]:
    """A byte progress bar on stderr (only on a terminal). Once the upload is
    complete the bar reads ``waiting`` and keeps ticking its elapsed time,
    since the server's work (alignment can take minutes) reports nothing."""
    bar = tqdm(desc=label, total=0, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False)

    def update(sent: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(sent - bar.n)
        if total and sent >= total:
            bar.set_description(waiting)

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.5)
            bar.refresh()

    ticker = asyncio.create_task(tick())
    try:
        yield update
    finally:
        ticker.cancel()
        bar.close()


class PartialDisplay:
    """Live partials: rewritten in place on a terminal (carriage return and
    erase-line, clipped to one row so the rewrite never leaves wrapped
    lines behind), or one ``partial:`` line each on stderr when asked for."""

    def __init__(self, out: TextIO, *, lines: bool = False) -> None:
        self._out = out
        self._in_place = out.isatty()
        self._lines = lines and not self._in_place
        self._shown = False

    def show(self, text: str, _delta: str | None) -> None:
        if self._in_place:
            width = max(10, shutil.get_terminal_size().columns - 1)
            self._out.write("\r\x1b[K" + text[-width:])
            self._out.flush()
            self._shown = True
        elif self._lines:
            print(f"partial: {text}", file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Erase the in-place line so the final takes its place."""
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._shown = False
