"""Messages that are not progress (duplicate frames, Realtime client errors): the cap per
connection and the rate limit of their archive lines."""

from __future__ import annotations

from polyasr.live.strays import LOG_BURST, Strays


def test_the_first_lines_then_one_a_second_saying_how_many_were_left_out() -> None:
    now = [0.0]
    strays = Strays(limit=None, clock=lambda: now[0])
    lines = [strays.note() for _ in range(50)]  # a burst, all within one instant
    assert lines[:LOG_BURST] == [{}] * LOG_BURST and lines[LOG_BURST:] == [None] * (50 - LOG_BURST)
    now[0] = 1.0
    assert strays.note() == {"left_out": 50 - LOG_BURST}
    assert strays.note() is None
    assert strays.count == 52 and not strays.exceeded


def test_the_cap() -> None:
    strays = Strays(limit=3)
    for _ in range(3):
        strays.note()
    assert not strays.exceeded
    strays.note()
    assert strays.exceeded
