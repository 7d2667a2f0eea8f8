"""Aligner-timed words on dictation finals (``"words": true``), end to end: a real
server process on the tiny checkpoints of this run's backend, real sockets.

The server commits a stable prefix after 2 s of speech, so a dictation of a
few sentences has segments aligned as they commit and a tail aligned at the stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer, serving
from tests.live.test_ws_protocol import Client, frames, start, stream

FRAMES = 120  # 12 s: the test clip (speech, then a second of silence) twice and a bit


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(
        backend, tiny, tmp_path_factory.mktemp("words-logs"), POLYASR_STABLE_COMMIT_MIN_SEC="2"
    ) as live:
        yield live


def dictate(client: Client, sid: str, count: int = FRAMES, stop_id: str = "w-stop") -> None:
    assert client.recv()["type"] in ("started", "resumed")
    stream(client, frames(count))
    client.send({"type": "stop", "stopId": stop_id, "finalCapturedSeq": count})


def answer(client: Client) -> list[dict[str, Any]]:
    """Everything after the stop's acks up to and including ``done``."""
    client.until("final")
    while client.received[-1]["type"] != "done":
        client.recv()
    first = next(i for i, m in enumerate(client.received) if m["type"] == "final")
    return client.received[first:]


def events(server: LiveServer, session_id: str) -> list[dict[str, Any]]:
    assert server.logs is not None
    lines = [
        json.loads(line)
        for folder in sorted((server.logs / "sessions").glob("*/*"))
        for line in (folder / "events.jsonl").read_text().splitlines()
    ]
    folders = {e.get("session_id") for e in lines}
    assert session_id in folders
    return lines


def check_words(words: list[dict[str, Any]], text: str, seconds: float) -> None:
    """Times within the session's audio, never decreasing; texts the final's text."""
    assert words, "a dictation with speech has words"
    floor = 0.0
    for word in words:
        assert set(word) == {"text", "start", "end"}
        assert floor <= word["start"] <= word["end"] <= seconds
        floor = word["end"]
    assert "".join(w["text"] for w in words) == "".join(text.split())


def test_words_follow_the_final(server: LiveServer) -> None:
    client = start(server, "words-on", words=True)
    dictate(client, "words-on")
    final, message, done = answer(client)
    assert final["type"] == "final" and "words" not in final  # the final's shape is unchanged
    assert message["type"] == "words"
    assert message["sessionId"] == "words-on" and message["stopId"] == "w-stop"
    assert "reason" not in message
    assert done == {"type": "done", "sessionId": "words-on", "stopId": "w-stop"}
    check_words(message["words"], final["text"], FRAMES * 0.1)
    assert client.closed_with() == 1000
    # Segments were aligned as they committed: words on both sides of the stable prefix's end.
    committed = [e for e in events(server, "words-on") if e["type"] == "stable_prefix_committed"]
    assert committed, "the dictation committed a stable prefix"
    stable_sec = committed[-1]["stable_sec"]
    # (The tiny aligner's random times land at the end of each segment's audio; each
    # segment's words still lie in that segment's stretch of the session.)
    assert any(w["end"] <= stable_sec for w in message["words"])
    assert any(w["start"] > stable_sec for w in message["words"])


def test_no_words_unless_asked(server: LiveServer) -> None:
    client = start(server, "words-off")
    dictate(client, "words-off", count=30)
    assert [m["type"] for m in answer(client)] == ["final", "done"]


def test_a_language_outside_the_aligners_gets_a_reason(server: LiveServer) -> None:
    # Arabic: a language of the ASR model, not of the aligner
    client = start(server, "words-ar", words=True, language="ar")
    dictate(client, "words-ar", count=30)
    final, message, done = answer(client)
    assert final["type"] == "final" and done["type"] == "done"
    assert message == {
        "type": "words",
        "sessionId": "words-ar",
        "stopId": "w-stop",
        "reason": "language_not_aligned",
    }


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_words_must_be_a_boolean(server: LiveServer, value: Any) -> None:
    client = start(server, "words-bad", words=value)
    reply = client.recv()
    assert reply["type"] == "error" and reply["code"] == "invalid_option"
    assert "'words'" in reply["error"]
    assert client.closed_with() == 1008


def test_resume_keeps_the_words_and_a_replay_repeats_them(server: LiveServer) -> None:
    first = start(server, "words-resume", words=True)
    assert first.recv()["type"] == "started"
    stream(first, frames(70))
    first.ws.close()  # the network drops mid-dictation
    # The resume does not restate "words": the session keeps its start's choice.
    second = start(server, "words-resume", kind="resume")
    assert second.recv()["ackSeq"] == 69
    stream(second, frames(FRAMES - 70, first=70))
    second.send({"type": "stop", "stopId": "r-stop", "finalCapturedSeq": FRAMES})
    final, message, _done = answer(second)
    check_words(message["words"], final["text"], FRAMES * 0.1)
    # The same stop again (a client that missed the answer): the same final, the same words.
    third = start(server, "words-resume", kind="resume")
    third.recv()
    third.send({"type": "stop", "stopId": "r-stop", "finalCapturedSeq": FRAMES})
    done = {"type": "done", "sessionId": "words-resume", "stopId": "r-stop"}
    assert answer(third) == [final, message, done]


def test_words_with_confidence_carry_each_words_probability(server: LiveServer) -> None:
    client = start(server, "words-sure", words=True, confidence=True)
    dictate(client, "words-sure")
    final, message, _done = answer(client)
    words = message["words"]
    check_words([{k: w[k] for k in ("text", "start", "end")} for w in words], final["text"], FRAMES * 0.1)
    assert all(0 < w["probability"] <= 1 for w in words)
    # the same figure for the same word as the final's own list (space-delimited text)
    assert [(w["text"], w["probability"]) for w in words] == [
        (w["text"], w["probability"]) for w in final["confidence"]
    ]
    replay = start(server, "words-sure", kind="resume")
    replay.recv()
    replay.send({"type": "stop", "stopId": "w-stop"})
    assert answer(replay)[:2] == [final, message]  # kept with the stop result
