"""One byte budget, for the whole process, for decoded upload audio held in memory.

Compressed audio grows many times over when it is decoded to float32 (a
half-megabyte FLAC of silence is hours of samples), and a duration cap bounds
one request, not many at once. So every request that decodes an upload holds a
:class:`Reservation` of this budget (``POLYASR_DECODED_AUDIO_MB``): it waits
for room for its first piece (first come, first served, at most ``wait_sec``),
then charges each piece or block as it is decoded. A request that holds
nothing waits; one that holds something never does, so two requests never
wait on each other: a block that does not fit fails its request with
:class:`AudioBudgetFull` (503 ``server_busy``) instead of growing the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType

from polyasr.core.constants import SAMPLE_RATE

FLOAT32_BYTES = 4
# What a request waits for before it decodes anything: one piece of the
# transcription path (MAX_PIECE_SEC), the unit every upload is cut into.
FIRST_PIECE_BYTES = 30 * SAMPLE_RATE * FLOAT32_BYTES


def seconds_to_bytes(seconds: float) -> int:
    """Bytes of 16 kHz mono float32 audio lasting ``seconds``."""
    return int(seconds * SAMPLE_RATE) * FLOAT32_BYTES


class AudioBudgetFull(RuntimeError):
    """Decoded audio in flight fills the budget; retry shortly (HTTP 503 ``server_busy``)."""

    retry_after = 2


class AudioBudget:
    """Bytes of decoded audio the process holds for requests, at most ``limit``."""

    def __init__(self, limit: int, wait_sec: float) -> None:
        self.limit = limit
        self.wait_sec = wait_sec
        self.used = 0
        self._lock = threading.Lock()  # charges come from decoding threads
        self._waiting: deque[tuple[Reservation, asyncio.Future[None]]] = deque()

    def hold(self, ceiling: int | None = None) -> Reservation:
        """A reservation for one request (``async with``). ``ceiling``: the
        most it can hold at once (a streamed decode lets go of its pieces),
        ``None`` when it keeps everything it decodes."""
        return Reservation(self, ceiling)

    def _full(self) -> AudioBudgetFull:
        return AudioBudgetFull(
            f"decoded audio in flight fills the {self.limit / 1_048_576:g} MB budget "
            "(POLYASR_DECODED_AUDIO_MB); retry shortly"
        )

    def _take(self, reservation: Reservation, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            reservation.held += nbytes
            return True

    async def _admit(self, reservation: Reservation) -> None:
        """Wait in line for the first piece's bytes; raise :class:`AudioBudgetFull` after ``wait_sec``."""
        first = min(FIRST_PIECE_BYTES, reservation.ceiling or FIRST_PIECE_BYTES, self.limit)
        if not self._waiting and self._take(reservation, first):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (reservation, granted)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self.wait_sec):
                await asyncio.shield(granted)
        except BaseException as exc:
            if granted.done() and isinstance(exc, TimeoutError):
                return  # room came just as the wait ran out
            if entry in self._waiting:
                self._waiting.remove(entry)
            self._give_back(reservation)
            if isinstance(exc, TimeoutError):
                raise self._full() from None
            raise

    def _charge(self, reservation: Reservation, nbytes: int) -> None:
        """Count ``nbytes`` more decoded audio; never waits (see the module's docstring)."""
        reservation.decoded += nbytes
        need = reservation.decoded
        if reservation.ceiling is not None:
            need = min(need, reservation.ceiling)
        if need > reservation.held and not self._take(reservation, need - reservation.held):
            raise self._full()

    def _give_back(self, reservation: Reservation) -> None:
        """Return a reservation's bytes and let waiting requests in, oldest first."""
        with self._lock:
            self.used -= reservation.held
            reservation.held = 0
        while self._waiting:
            waiter, granted = self._waiting[0]
            first = min(FIRST_PIECE_BYTES, waiter.ceiling or FIRST_PIECE_BYTES, self.limit)
            if not self._take(waiter, first):
                return
            self._waiting.popleft()
            granted.set_result(None)


class Reservation:
    """One request's share of the :class:`AudioBudget`, returned when the request ends."""

    def __init__(self, budget: AudioBudget, ceiling: int | None) -> None:
        self.budget = budget
        self.ceiling = ceiling
        self.held = 0  # bytes taken from the budget
        self.decoded = 0  # bytes decoded so far

    async def admit(self) -> None:
        """Wait for room for the first piece (raises :class:`AudioBudgetFull`)."""
        await self.budget._admit(self)

    def charge(self, nbytes: int) -> None:
        """Count decoded audio (from any thread); raises :class:`AudioBudgetFull`."""
        self.budget._charge(self, nbytes)

    def release(self) -> None:
        """The request is over: its bytes go back (on the event loop's thread)."""
        self.budget._give_back(self)

    async def __aenter__(self) -> Reservation:
        await self.admit()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
