"""Stop results over real server processes: one utterance, one
result — across a new ``start`` with reused ids, a stop retried on a second
connection, and a restart of the service on the same ``POLYASR_LOG_DIR``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from polyasr.live.basr.wire import build_frame
from tests.conftest import serving
from tests.live.test_ws_protocol import FRAME, frames, start, stream


def stop(client: Any, stop_id: str, captured: int) -> dict[str, Any]:
    client.send({"type": "stop", "stopId": stop_id, "finalCapturedSeq": captured})
    return client.until("final") if captured else client.recv()


def events(logs: Path, kind: str) -> list[dict[str, Any]]:
    time.sleep(0.3)
    return [
        event
        for path in (logs / "sessions").glob("*/*/events.jsonl")
        for line in path.read_text().splitlines()
        if (event := json.loads(line))["type"] == kind
    ]


def test_results_survive_a_restart_and_belong_to_their_incarnation(
    tiny: Any, backend: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with serving(backend, tiny, logs, POLYASR_PARTIALS_ENABLED="0") as server:
        said = start(server, "kept")
        said.recv()
        stream(said, frames(30))
        original = stop(said, "k1", 30)
        assert original["text"] and original["recognizedThroughSeq"] == 30
        # A retry on a second connection while (or after) the first finalize ran: same result.
        retry = start(server, "kept", kind="resume")
        retry.recv()
        assert stop(retry, "k1", 30) == original
        # The same ids after a new start: a new utterance, decoded from its own (silent) audio.
        anew = start(server, "reused")
        anew.recv()
        stream(anew, frames(30))
        first = stop(anew, "same", 30)
        again = start(server, "reused")
        again.recv()
        stream(again, [build_frame(i, b"\0" * FRAME) for i in range(10)])
        second = stop(again, "same", 10)
        assert first["text"] and second["text"] == "" and second["recognizedThroughSeq"] == 10
    assert (logs / "stops.sqlite3").exists()
    decodes_before = len(events(logs, "final_incremental"))
    with serving(backend, tiny, logs, POLYASR_PARTIALS_ENABLED="0") as server:
        after = start(server, "kept", kind="resume")
        assert after.recv()["ackSeq"] == -1  # the journal did not survive, the answer did
        assert stop(after, "k1", 30) == original
        latest = start(server, "reused", kind="resume")
        latest.recv()
        assert stop(latest, "same", 10) == second  # the latest incarnation's answer
    assert len(events(logs, "final_incremental")) == decodes_before  # nothing decoded twice
    assert len(events(logs, "stop_result_replayed")) >= 3


def test_an_expired_result_is_still_known_after_a_restart(tiny: Any, backend: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with serving(backend, tiny, logs, POLYASR_STOP_RESULT_TTL_SEC="1") as server:
        client = start(server, "old")
        client.recv()
        stream(client, frames(10))
        stop(client, "o", 10)
    time.sleep(1.2)
    with serving(backend, tiny, logs, POLYASR_STOP_RESULT_TTL_SEC="1") as server:
        late = start(server, "old", kind="resume")
        late.recv()
        late.send({"type": "stop", "stopId": "o", "finalCapturedSeq": 10})
        assert late.until("stopExpired")["reason"] == "stop_result_expired"


def test_the_stop_store_is_capped(tiny: Any, backend: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with serving(backend, tiny, logs, POLYASR_STOP_STORE_MAX="2") as server:
        for n in range(3):
            client = start(server, f"cap-{n}")
            client.recv()
            stream(client, [build_frame(0, b"\0" * FRAME)])
            stop(client, "s", 1)
    with serving(backend, tiny, logs, POLYASR_STOP_STORE_MAX="2") as server:
        newest = start(server, "cap-2", kind="resume")
        newest.recv()
        assert stop(newest, "s", 1)["text"] == ""  # replayed from the store
        oldest = start(server, "cap-0", kind="resume")
        oldest.recv()
        oldest.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 1})
        # The least recently used record went: the server knows nothing of that utterance.
        assert oldest.until("stopExpired")["reason"] == "session_not_held"
    assert len(events(logs, "stop_result_replayed")) == 1
