"""The browser page (web/) in headless Chromium against a real server process.

Chromium's fake microphone plays the project's own speech clip, so the page's
whole capture path runs for real: AudioWorklet, resampling to 16 kHz PCM16,
BASR framing, the v2 stop with ``finalCapturedSeq``, the coverage check, and
the batch recovery when a final does not cover the audio. The upload form is
driven with a real file. The page also runs where it is not a secure context
(plain http under a name other than localhost, as on a LAN) and against a
server with a key it was not given. Skipped only where Debian's chromium is
not installed.
"""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from playwright.sync_api import Browser, ConsoleMessage, Page, WebSocketRoute, sync_playwright

from polyasr.audio.decoding import decode_audio
from tests.audio_util import DATA, speech, wav_bytes
from tests.conftest import INSECURE_HOST, KEYED_KEY, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)

# The flags this machine needs (no sandbox as root, no network beyond loopback)
# plus a fake microphone that auto-grants and plays a WAV file once, and a
# name for loopback that is not a secure context (as a LAN address is not).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
]
SERVER_ENV = {"POLYASR_PARTIALS_ENABLED": "1", "POLYASR_PARTIAL_INTERVAL_SEC": "0.3"}
SPEAK_SEC = 6.0  # stop while the clip (8.2 s) is still playing


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """voice_a, then a second of silence, as a 48 kHz WAV (what a real mic delivers)."""
    clip = np.concatenate([speech("voice_a"), np.zeros(16_000, np.float32)])
    at_48k = np.interp(np.arange(len(clip) * 3) / 3, np.arange(len(clip)), clip)
    path = tmp_path_factory.mktemp("mic") / "voice_a_48k.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes((np.clip(at_48k, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def browser(microphone_wav: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone_wav}%noloop"],
        )
        yield launched
        launched.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} @ {message.location.get('url', '')}")


@pytest.fixture
def server(live_server: Any) -> LiveServer:
    return live_server(**SERVER_ENV)


def open_page(browser: Browser, server: LiveServer) -> tuple[Page, Console]:
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    console = Console(page)
    page.goto(f"{server.url}/?language=en")
    page.wait_for_function("document.querySelector('#server').textContent.includes('·')")
    return page, console


def dictate(page: Page) -> str:
    """Start, speak for a while, stop; returns the last partial shown before the stop."""
    page.click("#start")
    page.wait_for_selector("body[data-dictation=listening]", timeout=30_000)
    page.wait_for_function("document.querySelector('#partial').textContent.trim() !== ''", timeout=60_000)
    page.wait_for_function(
        "parseInt(/(\\d+) frames sent/.exec(document.querySelector('#dictation-status').textContent)?.[1])"
        f" >= {SPEAK_SEC * 10}",
        timeout=60_000,
    )
    partial = page.text_content("#partial") or ""
    page.click("#stop")
    return partial


def session_archive(logs: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The one WS session the server archived: its events and its audio (the
    FLAC is written when the connection has ended, so wait for it)."""
    deadline = time.monotonic() + 15
    while not (flacs := sorted((logs / "sessions").glob("*/*-ws-*/input.flac"))):
        assert time.monotonic() < deadline, "no session archive"
        time.sleep(0.1)
    (folder,) = [flac.parent for flac in flacs]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    audio, rate = soundfile.read(folder / "input.flac", dtype="float32")
    assert rate == 16_000
    return events, audio


def envelope_correlation(audio: np.ndarray, reference: np.ndarray) -> float:
    """Is this the clip? The median, over 1 s windows of the capture, of each
    window's best correlation of 20 ms RMS envelopes with the reference.

    Each window finds its own place in the reference, up to 3 s later than its
    own: the fake microphone may start late, and a loaded machine's audio thread
    drops buffers mid-capture, so one global lag under-rates a faithful capture.
    The clip itself scores ~1.0, another voice ~0.55."""

    def env(x: np.ndarray) -> np.ndarray:
        frames = x[: len(x) // 320 * 320].reshape(-1, 320)
        return np.sqrt((frames**2).mean(axis=1))

    a, r = env(audio), env(reference)
    window, slack = 50, 150
    scores = []
    for start in range(0, len(a) - window + 1, window // 2):
        piece = a[start : start + window]
        if piece.std() < 1e-4:  # silence matches nothing in particular
            continue
        offsets = range(max(0, start - 10), min(len(r) - window, start + slack) + 1)
        with np.errstate(invalid="ignore", divide="ignore"):  # a silent stretch of the reference
            found = [np.corrcoef(piece, r[o : o + window])[0, 1] for o in offsets]
        scores.append(float(np.nanmax(found)))
    return float(np.median(scores))


def test_dictation_in_the_browser(browser: Browser, server: LiveServer, tmp_path: Path) -> None:
    page, console = open_page(browser, server)
    partial = dictate(page)
    page.wait_for_selector("body[data-dictation=done]", timeout=60_000)
    final = page.text_content("#final") or ""
    coverage = page.text_content("#coverage") or ""
    shot = tmp_path / "dictation.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    assert partial.strip(), "a live partial was shown while speaking"
    assert final.strip(), "the final text is shown"
    assert page.get_attribute("#coverage", "data-covered") == "true", coverage
    captured = int(coverage.rsplit("finalCapturedSeq ", 1)[1].rstrip("."))
    assert captured >= SPEAK_SEC * 10
    events, audio = session_archive(tmp_path / "logs")
    sent = next(e for e in events if e["type"] == "final_sent")
    assert sent["recognized_through_seq"] == captured
    started = next(e for e in events if e["type"] == "protocol_started")
    assert started["session_id"].startswith("web-")
    # what reached the server is the clip, resampled from 48 kHz to 16 kHz in the worklet
    assert abs(len(audio) - captured * 1600) < 1600
    assert envelope_correlation(audio, speech("voice_a")) > 0.8  # another voice: ~0.55
    assert console.errors == []


def test_uncovered_final_is_recovered_through_the_batch_endpoint(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    page, console = open_page(browser, server)

    def strip_coverage(ws: WebSocketRoute) -> None:
        """Pass everything through, but take recognizedThroughSeq off the final."""
        upstream = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            if isinstance(message, str) and '"final"' in message:
                data = json.loads(message)
                data.pop("recognizedThroughSeq", None)
                message = json.dumps(data)
            ws.send(message)

        upstream.on_message(to_page)

    page.route_web_socket("**/ws/transcribe", strip_coverage)
    dictate(page)
    page.wait_for_selector("body[data-dictation=recovered]", timeout=60_000)
    assert page.get_attribute("#coverage", "data-covered") == "false"
    assert "recovered through POST /v1/audio/transcriptions" in (page.text_content("#coverage") or "")
    assert (page.text_content("#final") or "").strip()
    # the page uploaded its kept audio; the server archived what it decoded to (16 kHz FLAC)
    (upload,) = sorted((tmp_path / "logs" / "http").glob("*/*/audio.flac"))
    info = soundfile.info(str(upload))
    assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
    _, audio = session_archive(tmp_path / "logs")
    assert np.allclose(decode_audio(str(upload)), audio, atol=1e-4)  # the same audio the socket got
    assert console.errors == []


def test_file_upload_shows_transcript_and_alignment(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    page, console = open_page(browser, server)
    page.set_input_files("#file", str(DATA / "voice_a.wav"))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("body[data-upload=done]", timeout=120_000)
    shot = tmp_path / "upload.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    assert page.text_content("#upload-status") == "Done."
    assert (page.text_content("#batch-text") or "").strip() not in ("", "(no speech recognized)")
    assert "8.18 s of audio" in (page.text_content("#batch-meta") or "")
    has_align = "/v1/align" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    if has_align:
        assert page.locator("#timeline .word").count() > 0
        assert console.errors == []
    else:
        assert "POST /v1/align answered 404" in (page.text_content("#align-status") or "")
        assert page.locator("#timeline .word").count() == 0
        # the browser itself logs the 404 of the missing endpoint, and nothing else
        assert [e for e in console.errors if "/v1/align" not in e] == []
        assert all("404" in e for e in console.errors)


def test_speakers_are_coloured_on_the_timeline(browser: Browser, server: LiveServer, tmp_path: Path) -> None:
    two_voices = tmp_path / "two_voices.wav"
    pause = np.zeros(8000, np.float32)
    two_voices.write_bytes(wav_bytes(np.concatenate([speech("voice_a"), pause, speech("voice_b")])))
    page, console = open_page(browser, server)
    page.check("#diarize")
    page.set_input_files("#file", str(two_voices))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("body[data-upload=done]", timeout=180_000)
    shot = tmp_path / "speakers.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    assert page.text_content("#upload-status") == "Done."
    turns = page.locator("#speakers .turn")
    assert [turns.nth(i).get_attribute("data-speaker") for i in range(turns.count())] == ["A", "B"]
    colours = {turns.nth(i).evaluate("node => getComputedStyle(node).backgroundColor") for i in range(2)}
    assert len(colours) == 2  # one colour per speaker
    assert "2 speaker(s)" in (page.text_content("#speakers") or "")
    speakers = page.locator("#timeline .segment").evaluate_all("nodes => nodes.map(n => n.dataset.speaker)")
    assert speakers and set(speakers) <= {"A", "B"}
    assert console.errors == []


def test_outside_a_secure_context_files_transcribe_and_the_mic_says_why_it_is_off(
    browser: Browser, keyed_server: LiveServer, tmp_path: Path
) -> None:
    page = browser.new_page()
    console = Console(page)
    page.goto(f"http://{INSECURE_HOST}:{keyed_server.port}/?language=en")
    page.wait_for_function("document.querySelector('#server').textContent.includes('·')")
    assert page.evaluate("window.isSecureContext") is False
    assert page.get_attribute("body", "data-dictation") == "unavailable"
    assert page.locator("#start").is_disabled()
    assert "needs https or localhost" in (page.text_content("#dictation-status") or "")

    page.fill("#api-key", KEYED_KEY)
    page.dispatch_event("#api-key", "change")
    clip, notes = tmp_path / "clip.wav", tmp_path / "notes.txt"
    clip.write_bytes(wav_bytes(speech("voice_a")[: 2 * 16_000]))
    notes.write_text("not audio at all\n" * 20)
    for upload in (clip, notes):
        page.evaluate("document.body.dataset.upload = ''")
        page.set_input_files("#file", str(upload))
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("body[data-upload=done]", timeout=120_000)
        if upload == clip:
            assert page.text_content("#upload-status") == "Done."
            assert "2.00 s of audio" in (page.text_content("#batch-meta") or "")
    status = page.text_content("#upload-status") or ""
    assert status.startswith("Failed: HTTP 400: not an audio file the server can read"), status
    # nothing of the first file's result is left on show
    shown = [page.text_content(f"#{part}") for part in ("batch-text", "batch-meta", "align-status")]
    assert shown == ["", "", ""]
    assert page.locator("#timeline .segment").count() == 0
    assert [e for e in console.errors if e.startswith("pageerror")] == []


def test_a_refused_socket_shows_the_servers_reason(browser: Browser, keyed_server: LiveServer) -> None:
    page = browser.new_page()
    page.goto(f"{keyed_server.url}/?language=en")  # no key given
    page.click("#start")
    page.wait_for_selector("body[data-dictation=error]", timeout=30_000)
    status = page.text_content("#dictation-status") or ""
    assert status.startswith("unauthorized: a valid API key is required"), status
    assert "undefined" not in status
