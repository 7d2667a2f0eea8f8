"""The process-wide budget of decoded upload audio: first come, first served
for room to start, then the oldest request waits for room to grow and any
other that does not fit fails at once (503 server_busy)."""

from __future__ import annotations

import asyncio

import pytest

from polyasr.audio.budget import FIRST_PIECE_BYTES, AudioBudget, AudioBudgetFull

PIECE = FIRST_PIECE_BYTES


async def test_a_request_waits_for_room_to_start_and_gives_up_after_the_wait() -> None:
    budget = AudioBudget(limit=2 * PIECE, wait_sec=0.3)
    async with budget.hold() as first:
        first.charge(2 * PIECE)
        with pytest.raises(AudioBudgetFull, match="POLYASR_DECODED_AUDIO_MB"):
            async with budget.hold():
                pass
        waiting = asyncio.ensure_future(budget.hold().__aenter__())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # queued behind the full budget
    second = await asyncio.wait_for(waiting, 1)  # let in as soon as the first gave its bytes back
    assert second.held == PIECE and budget.used == PIECE
    second.release()
    assert budget.used == 0


async def test_the_oldest_request_waits_to_grow_and_a_younger_one_fails() -> None:
    budget = AudioBudget(limit=3 * PIECE, wait_sec=5)
    older, younger = budget.hold(), budget.hold()
    await older.admit()
    await younger.admit()
    older.charge(PIECE)  # within what it was let in with
    grows = asyncio.ensure_future(asyncio.to_thread(older.charge, 2 * PIECE))
    await asyncio.sleep(0.1)
    assert not grows.done()  # 4 pieces do not fit in 3: the oldest waits
    with pytest.raises(AudioBudgetFull):
        younger.charge(3 * PIECE)  # a younger one never waits while holding audio
    younger.release()
    await asyncio.wait_for(grows, 2)
    assert older.held == 3 * PIECE
    older.release()
    assert budget.used == 0


async def test_a_streamed_request_counts_no_more_than_its_ceiling() -> None:
    budget = AudioBudget(limit=2 * PIECE, wait_sec=0)
    async with budget.hold(ceiling=2 * PIECE) as streamed:
        for _ in range(10):  # hours of pieces, never more than two held at once
            streamed.charge(PIECE)
        assert streamed.held == 2 * PIECE
    assert budget.used == 0
