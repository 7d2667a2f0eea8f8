"""Schemathesis against a live server's own OpenAPI schema (issue 8, tests).

Requests are generated from ``/openapi.json`` as the running server publishes
it, both inside the schema (positive) and outside it (negative), and sent over
loopback to a real server process on the tiny checkpoints. Whatever arrives,
the answer is never a 5xx, every refusal is the usual JSON error body, and the
server still answers ``/health`` afterwards. Uploads of random bytes are mostly
refused with a 4xx: that is the point, not a problem.

Schemathesis is driven through its Python API (``as_strategy`` under a plain
``hypothesis.given``) rather than its pytest plugin's lazy fixtures, so the
case count and seed are ours and the per-operation tally can be checked.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, serving

CASES = 300  # per generation mode, spread over every operation
AUDIO_CASES = 30  # per upload route, each a real decode
REQUEST_TIMEOUT = 120.0  # a real (tiny) model decodes on a loaded 2-core machine


UPLOADS = ("/v1/audio/transcriptions", "/v1/align")


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The manifest endpoint reads files on the server: confine it to an empty
    # folder so generated paths reach the real checks and never real audio.
    roots = tmp_path_factory.mktemp("manifest-root")
    with serving(
        backend, tiny, tmp_path_factory.mktemp("fuzz-http-logs"), POLYASR_MANIFEST_ROOTS=str(roots)
    ) as live:
        yield live


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def operations(api: Any) -> set[tuple[str, str]]:
    return {(result.ok().method.upper(), result.ok().path) for result in api.get_all_operations()}


def test_the_schema_lists_every_http_route(api: Any) -> None:
    # A route missing from the schema would silently escape the fuzzing below.
    assert operations(api) >= {
        ("GET", "/health"),
        ("POST", "/model/unload"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/align"),
        ("POST", "/v1/align/manifest"),
    }


def fuzz(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def run_cases(server: LiveServer, cases: Any, count: int, tally: dict[Any, Counter[int]], title: str) -> int:
    """Send ``count`` generated cases; every answer is below 500 and every refusal
    is a JSON error. Prints the per-operation status tally; returns how many ran."""

    @fuzz(count)
    @given(case=cases)
    def one_request(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=REQUEST_TIMEOUT)
        tally[(case.method.upper(), case.path)][response.status_code] += 1
        assert response.status_code < 500, (
            f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}\n"
            f"reproduce: {case.as_curl_command()}"
        )
        if response.status_code >= 400:
            _refusal_is_a_json_error(response)

    one_request()
    ran = sum(sum(c.values()) for c in tally.values())
    print(f"\n{title}: {ran} requests")
    for (method, path), statuses in sorted(tally.items()):
        print(f"  {method:4} {path:28} {dict(sorted(statuses.items()))}")
    return ran


def _refusal_is_a_json_error(response: Any) -> None:
    body = response.json()
    assert isinstance(body, dict), body
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str), body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_generated_request_gets_a_5xx(server: LiveServer, api: Any, mode: GenerationMode) -> None:
    tally: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)

    ran = run_cases(server, api.as_strategy(generation_mode=mode), CASES, tally, f"schemathesis {mode}")
    # Negative cases exist only where there is an input to break.
    with_inputs = {("POST", path) for path in (*UPLOADS, "/v1/align/manifest")}
    assert set(tally) >= (operations(api) if mode is GenerationMode.POSITIVE else with_inputs), tally
    assert ran >= CASES // 2
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code == 200


@pytest.mark.parametrize("path", UPLOADS)
def test_real_audio_with_generated_form_fields_gets_no_5xx(server: LiveServer, api: Any, path: str) -> None:
    # Random bytes never decode, so the fields next to the file (language,
    # response_format, prompt, context, text, ...) would only meet the audio
    # check. Here the file is real speech and only the fields are generated.
    wav = wav_bytes(speech("voice_a")[:16000])

    def with_real_audio(case: Any) -> Any:
        case.body["file"] = wav
        return case

    tally: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    cases = api[path]["POST"].as_strategy().map(with_real_audio)
    ran = run_cases(server, cases, AUDIO_CASES, tally, f"schemathesis {path} with real audio")
    assert ran == AUDIO_CASES
    assert tally[("POST", path)][200] > 0, "some generated fields were accepted and decoded"
    assert httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code == 200
