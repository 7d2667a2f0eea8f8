"""One byte budget, for the whole process, for decoded upload audio held in memory.

Compressed audio grows many times over when it is decoded to float32 (a
half-megabyte FLAC of silence is hours of samples), and a duration cap bounds
one request, not many at once. So every request that decodes an upload holds a
:class:`Reservation` of this budget (``POLYASR_DECODED_AUDIO_MB``): it waits
for room for its first piece (first come, first served, at most ``wait_sec``),
then charges each piece or block as it is decoded. When a block does not fit,
the oldest request waits for room (at most ``wait_sec``) and any other fails
with :class:`AudioBudgetFull` (503 ``server_busy``) instead of growing the
process: only the oldest ever waits while holding audio, so requests never
wait on each other in a circle, and two large ones do not both fail.
"""

from __future__ import annotations

import asyncio
import itertools
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
        self._room = threading.Condition()  # charges come from decoding threads
        self._waiting: deque[tuple[Reservation, asyncio.Future[None]]] = deque()
        self._tickets = itertools.count()
        self._active: set[int] = set()  # admitted reservations, by ticket (admission order)
        self._growing = False  # the oldest reservation waits for room; nobody new is let in

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

    def _first(self, reservation: Reservation) -> int:
        return min(FIRST_PIECE_BYTES, reservation.ceiling or FIRST_PIECE_BYTES, self.limit)

    def _take(self, reservation: Reservation, nbytes: int) -> bool:
        """Take ``nbytes`` for ``reservation`` if they fit (under ``_room``)."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        reservation.held += nbytes
        return True

    def _enter(self, reservation: Reservation) -> None:
        reservation.ticket = next(self._tickets)
        self._active.add(reservation.ticket)

    async def _admit(self, reservation: Reservation) -> None:
        """Wait in line for the first piece's bytes; raise :class:`AudioBudgetFull` after ``wait_sec``."""
        with self._room:
            if not self._waiting and not self._growing and self._take(reservation, self._first(reservation)):
                self._enter(reservation)
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
            with self._room:
                if entry in self._waiting:
                    self._waiting.remove(entry)
            self._give_back(reservation)
            if isinstance(exc, TimeoutError):
                raise self._full() from None
            raise

    def _charge(self, reservation: Reservation, nbytes: int) -> None:
        """Count ``nbytes`` more decoded audio. Only the oldest reservation
        waits for room (its juniors never wait, so they fail or finish and
        make room); any other that does not fit fails at once."""
        with self._room:
            reservation.decoded += nbytes
            need = reservation.decoded
            if reservation.ceiling is not None:
                need = min(need, reservation.ceiling)
            grow = need - reservation.held
            if grow <= 0 or self._take(reservation, grow):
                return
            if reservation.ticket is None or reservation.ticket != min(self._active):
                raise self._full()
            self._growing = True
            try:
                if not self._room.wait_for(lambda: self.used + grow <= self.limit, self.wait_sec):
                    raise self._full()
                self._take(reservation, grow)
            finally:
                self._growing = False

    def _give_back(self, reservation: Reservation) -> None:
        """Return a reservation's bytes (on the event loop's thread) and let
        waiting requests in, oldest first, unless the oldest one needs the room."""
        admitted = []
        with self._room:
            self.used -= reservation.held
            reservation.held = 0
            if reservation.ticket is not None:
                self._active.discard(reservation.ticket)
            self._room.notify_all()
            while self._waiting and not self._growing:
                waiter, granted = self._waiting[0]
                if not self._take(waiter, self._first(waiter)):
                    break
                self._waiting.popleft()
                self._enter(waiter)
                admitted.append(granted)
        for granted in admitted:
            granted.set_result(None)


class Reservation:
    """One request's share of the :class:`AudioBudget`, returned when the request ends."""

    def __init__(self, budget: AudioBudget, ceiling: int | None) -> None:
        self.budget = budget
        self.ceiling = ceiling
        self.held = 0  # bytes taken from the budget
        self.decoded = 0  # bytes decoded so far
        self.ticket: int | None = None  # the order it was let in

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
