"""GET /metrics on a real server process: after a batch request and a dictation
the Prometheus text parses and the series count what actually happened."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from polyasr.api.metrics import Metrics
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech, wav_bytes

SPEECH = speech("voice_a")
PCM = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition as {(name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def dictate(url: str, session_id: str, frames: int = 40) -> dict[str, Any]:
    """One v2 dictation of ``frames`` × 100 ms of speech; returns the final."""
    with connect(url.replace("http", "ws") + "/ws/transcribe") as ws:
        ws.send(
            json.dumps(
                {"type": "start", "protocol": 1, "control": 2, "sessionId": session_id, "language": "en"}
            )
        )
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        for seq in range(frames):
            ws.send(build_frame(seq, PCM[seq * 3200 : (seq + 1) * 3200]))
            time.sleep(0.02)
        ws.send(json.dumps({"type": "stop", "stopId": "m", "finalCapturedSeq": frames}))
        while (message := json.loads(ws.recv(timeout=60)))["type"] != "final":
            pass
        return message


def wait_for(url: str, name: str, want: float, **labels: str) -> None:
    deadline = time.monotonic() + 10
    while value(scrape(url), name, **labels) != want:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {want}"
        time.sleep(0.1)


def test_metrics_count_real_traffic(live_server: Any) -> None:
    server = live_server(POLYASR_PARTIALS_ENABLED="1", POLYASR_PARTIAL_INTERVAL_SEC="0.2")
    url = server.url
    batch = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(SPEECH))},
        data={"language": "en"},
        timeout=120,
    )
    assert batch.status_code == 200
    assert httpx.get(f"{url}/no/such/path").status_code == 404
    final = dictate(url, "metrics-1")
    assert final["recognizedThroughSeq"] == 40

    # a dictation in progress is an active session, and stops being one after done
    wait_for(url, "polyasr_ws_sessions_active", 0)  # the finished one has closed (after its final)
    with connect(url.replace("http", "ws") + "/ws/transcribe") as ws:
        ws.send(json.dumps({"type": "start", "protocol": 1, "sessionId": "open"}))
        ws.recv(timeout=30)
        assert value(scrape(url), "polyasr_ws_sessions_active") == 1
    wait_for(url, "polyasr_ws_sessions_active", 0)

    assert httpx.post(f"{url}/model/unload").json()["unloaded"] == ["asr"]
    samples = scrape(url)

    requests = "polyasr_http_requests_total"
    assert value(samples, requests, route="/v1/audio/transcriptions", method="POST", status="200") == 1
    assert value(samples, requests, route="/model/unload", method="POST", status="200") == 1
    assert value(samples, requests, route="<unmatched>", method="GET", status="404") == 1
    assert value(samples, requests, route="/health", method="GET", status="200") >= 1  # readiness polls
    assert not any("/no/such/path" in dict(labels).values() for _, labels in samples)

    decode = "polyasr_decode_seconds_count"
    for kind in ("batch", "final", "probe"):  # the probe runs once at start-up
        assert value(samples, decode, unit="asr", kind=kind) >= 1, kind
    assert value(samples, "polyasr_decode_seconds_sum", unit="asr", kind="batch") > 0
    assert value(samples, decode, unit="asr", kind="control") == 0  # loads are not decodes
    # every run's batch size, by the same kinds: the upload was one clip
    size = "polyasr_batch_size"
    assert value(samples, f"{size}_count", unit="asr", kind="batch") == value(
        samples, decode, unit="asr", kind="batch"
    )
    assert value(samples, f"{size}_bucket", unit="asr", kind="batch", le="1.0") >= 1
    assert value(samples, f"{size}_count", unit="asr", kind="control") == 0

    assert value(samples, "polyasr_model_loads_total", unit="asr") == 1  # the preload
    assert value(samples, "polyasr_model_load_seconds_count", unit="asr") == 1
    assert value(samples, "polyasr_model_load_seconds_sum", unit="asr") > 0
    assert value(samples, "polyasr_model_evictions_total", unit="asr") == 1
    assert ("polyasr_model_loads_total", frozenset({("unit", "align")})) in samples  # present at 0

    assert value(samples, "polyasr_queue_depth", unit="asr") == 0
    assert ("polyasr_queue_depth", frozenset({("unit", "align")})) in samples
    assert value(samples, "process_resident_memory_bytes") > 50 * 2**20


def test_apps_in_one_process_have_their_own_registries() -> None:
    depth = {"asr": 3, "align": 0}
    first = Metrics(queue_depth=depth.get, engine_memory=lambda: {"active": 2.0, "peak": 3.0})
    second = Metrics(queue_depth=lambda _unit: None, engine_memory=dict)
    first.request("/health", "GET", 200)
    one = parse(first.exposition()[0].decode())
    two = parse(second.exposition()[0].decode())
    assert value(one, "polyasr_http_requests_total", route="/health", method="GET", status="200") == 1
    assert not any(name == "polyasr_http_requests_total" for name, _ in two)
    assert value(one, "polyasr_queue_depth", unit="asr") == 3
    assert value(one, "polyasr_engine_memory_bytes", kind="peak") == 3 * 2**20
    assert not any(name == "polyasr_queue_depth" for name, _ in two)  # no manager yet: no queue series


def test_engine_memory_is_the_health_block_and_the_metric(
    make_settings: Any, make_engine: Any, backend: str
) -> None:
    """The engine names its figures once: /health's memory block and the
    metric's ``kind`` labels are the same numbers (CUDA on the CPU has none)."""
    engine = make_engine(make_settings())
    memory = engine.memory_mib()
    info = engine.info()
    if backend == "mlx":
        assert set(memory) == {"active", "peak", "cache"}
        assert set(info["memory_mb"]) == set(memory)
    else:
        assert memory == {} and info["gpu"] is None
    samples = parse(
        Metrics(queue_depth=lambda _unit: 0, engine_memory=lambda: memory).exposition()[0].decode()
    )
    exported = {
        dict(labels)["kind"]: v
        for (name, labels), v in samples.items()
        if name == "polyasr_engine_memory_bytes"
    }
    assert exported == {kind: mib * 2**20 for kind, mib in memory.items()}
