"""Schemathesis against a live server's own OpenAPI schema.

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
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.audio_util import speech, wav_bytes
from tests.conftest import REPO, LiveServer, serving

pytestmark = pytest.mark.usefixtures("ieee_floats")  # see tests/conftest.py

CASES = 300  # per generation mode, spread over every operation
AUDIO_CASES = 30  # per upload route, each a real decode
MANIFEST_CASES = 60
REQUEST_TIMEOUT = 120.0  # a real (tiny) model decodes on a loaded 2-core machine


UPLOADS = ("/v1/audio/transcriptions", "/v1/align")


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder the manifest endpoint may read: real speech, files that
    are not audio, and a symlink out of the folder."""
    root = tmp_path_factory.mktemp("manifest-root")
    (root / "speech.wav").write_bytes(wav_bytes(speech("voice_a")[:16000]))
    (root / "notes.txt").write_text("not audio\n")
    (root / "noise.wav").write_bytes(bytes(range(256)) * 20)  # a .wav name, no WAV inside
    (root / "empty.wav").write_bytes(b"")
    (root / "folder.wav").mkdir()
    (root / "outside.wav").symlink_to(REPO / "README.md")  # resolves out of the root
    return root


@pytest.fixture(scope="module")
def server(
    tiny: Any, backend: str, manifest_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with serving(
        backend, tiny, tmp_path_factory.mktemp("fuzz-http-logs"), POLYASR_MANIFEST_ROOTS=str(manifest_root)
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


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ROOT_FILES = ["speech.wav", "notes.txt", "noise.wav", "empty.wav", "folder.wav", "outside.wav", "missing.wav"]


@st.composite
def manifests(draw: st.DrawFn, root: Path) -> dict[str, Any]:
    """Manifest bodies: entries naming files in and out of the root, with odd
    offsets and ids, next to odd top-level fields."""
    in_root = st.sampled_from(ROOT_FILES).map(lambda name: str(root / name))
    path = (
        st.just(str(root / "speech.wav"))
        | in_root
        | st.sampled_from(
            ["/etc/hostname", "/dev/zero", "/proc/self/status", f"{root}/../{root.name}/speech.wav"]
        )
        | st.sampled_from(["", "speech.wav", "."])
        | json_scalars
    )
    offset = st.floats(0, 1e4) | st.floats(0, 1e4) | json_scalars
    entry = st.fixed_dictionaries({"path": path}, optional={"offset": offset, "id": json_values})
    entries = st.lists(entry, min_size=1, max_size=2)
    body = {"manifest": draw(entries | entries | st.lists(entry | json_values, max_size=3) | json_values)}
    if draw(st.booleans()):
        languages = st.sampled_from(["en", "English", "de", None])
        body["language"] = draw(languages | languages | st.just("klingon") | json_scalars)
    if draw(st.booleans()):
        chunks = st.sampled_from([1, 3, 270, 300])
        body["max_chunk_seconds"] = draw(
            chunks | chunks | st.sampled_from([0, 301, "30", 2.5]) | json_scalars
        )
    return body


def test_manifests_naming_any_file_get_no_5xx(server: LiveServer, manifest_root: Path) -> None:
    # The manifest field has no schema (any JSON), so schemathesis cannot aim
    # at the files; this strategy does, inside and outside the allowed root.
    statuses: Counter[int] = Counter()

    speech_entry = {"path": str(manifest_root / "speech.wav"), "offset": 1.5, "id": "speech"}

    @fuzz(MANIFEST_CASES)
    @given(body=manifests(manifest_root))
    @example(body={"manifest": [speech_entry, speech_entry], "language": "en"})
    def one_manifest(body: dict[str, Any]) -> None:
        response = httpx.post(f"{server.url}/v1/align/manifest", json=body, timeout=REQUEST_TIMEOUT)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (body, response.status_code, response.text[:500])
        if response.status_code >= 400:
            _refusal_is_a_json_error(response)
        else:
            assert isinstance(response.json().get("segments"), list), response.text[:500]

    one_manifest()
    print(f"\nmanifest fuzz: {sum(statuses.values())} requests {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0, "a manifest naming real speech was aligned"
    assert httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code == 200
