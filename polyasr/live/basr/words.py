"""The final's words on the dictation socket: which outcome a stop answers with.

A session that asked for words (``"words": true`` on its ``start``) gets, after
its ``final`` and before ``done``, one ``words`` message: the words the forced
aligner timed (:mod:`polyasr.align.dictation`), or the reason there are none.
The outcome is kept with the stop result, so a replayed stop (after a
reconnect, or a restart) answers the same words; a replay while they are
still being aligned waits for them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from polyasr.align.dictation import NOT_KEPT, WordsOutcome
from polyasr.live.basr.sessions import SessionRecord, SessionRegistry

# The words a stop answers with, once aligned; None where the session did not ask for them.
Pending = asyncio.Future[WordsOutcome] | None
# What gives them, called once the final has gone out (the tail is aligned only then).
WordsOf = Callable[[], Pending]


def _ready(outcome: WordsOutcome) -> asyncio.Future[WordsOutcome]:
    future: asyncio.Future[WordsOutcome] = asyncio.get_running_loop().create_future()
    future.set_result(outcome)
    return future


def decoded_words(registry: SessionRegistry, record: SessionRecord, stop_id: str) -> Pending:
    """The words of the session's final (decoded, on this connection or an
    earlier one), gathered once and kept with the stop result once aligned,
    whether or not a connection still waits. None: the session did not ask."""
    if record.words is None:
        return None

    def keep(outcome: WordsOutcome) -> None:
        registry.record_words(record, stop_id, json.dumps(outcome.to_json()))

    return record.words.outcome(keep)


def replayed_words(
    registry: SessionRegistry, record: SessionRecord, stop_id: str, kept: str | None
) -> Pending:
    """The words of a replayed final (None: the session did not ask): as kept
    with the stop result, else gathered here (or still being gathered), else
    gone (a restart came between the final and its words)."""
    if record.words is None:
        return None
    if kept is not None:
        return _ready(WordsOutcome.from_json(json.loads(kept)))
    if record.words.decoded:
        return decoded_words(registry, record, stop_id)
    return _ready(WordsOutcome(reason=NOT_KEPT))
