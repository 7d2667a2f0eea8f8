"""Unit tests of the dictation state machine with a scripted decoder.

The decoder here is scripted (deterministic words, counted calls) so the
tests can say exactly what reached each decode; the VAD and the speaker filter
are the real Silero and Resemblyzer on the project's own speech clips.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from polyasr.audio.speech import SpeakerGate, passes_energy_gate, shared_vad
from polyasr.audio.voice import shared_voice_encoder
from polyasr.core.engine import Transcript
from polyasr.dictation.gate import SpeechGate
from polyasr.dictation.recognizer import DictationSettings
from polyasr.dictation.session import DictationSession
from polyasr.live.basr.journal import FrameJournal
from polyasr.live.basr.wire import partial
from polyasr.live.refusals import ProtocolError
from polyasr.models.scheduler import Priority
from polyasr.models.transcriber import TranscribeRequest
from tests.audio_util import speech

SR = 16000
VOICE_A = speech("voice_a")
VOICE_B = speech("voice_b")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


@dataclass
class Call:
    priority: Priority
    seconds: float
    prefix: str


@dataclass
class ScriptedDecoder:
    """Words in proportion to the audio; CJK characters when ``cjk``."""

    cjk: bool = False
    calls: list[Call] = field(default_factory=list)
    delay: float = 0.0  # latency of partial decodes

    async def decode(self, samples: np.ndarray, request: TranscribeRequest) -> Transcript:
        self.calls.append(Call(request.priority, len(samples) / SR, request.prefix))
        if self.delay and request.priority == Priority.PARTIAL:
            await asyncio.sleep(self.delay)
        n = max(1, round(len(samples) / SR / 0.5))
        n_call = len(self.calls)
        words = [chr(0x4E00 + n_call) if self.cjk else f"w{n_call}.{i}" for i in range(n)]
        text = ("" if self.cjk else " ").join(words)
        return Transcript(text=text, raw=f"raw:{text}")

    def by(self, priority: Priority) -> list[Call]:
        return [c for c in self.calls if c.priority == priority]


def session(**settings: Any) -> DictationSession:
    return DictationSession(
        vad=shared_vad().new_stream(),
        speaker=SpeakerGate(shared_voice_encoder()),
        settings=DictationSettings(**settings),
    )


async def feed(sess: DictationSession, audio: np.ndarray, frame: int = 1600) -> None:
    for i in range(0, len(audio), frame):
        piece = audio[i : i + frame]
        await sess.feed(piece, passes_energy_gate(piece))


def test_delta_rule() -> None:
    assert partial("s", "turn on", "")["delta"] == "turn on"
    assert partial("s", "turn on the lights", "turn on")["delta"] == " the lights"
    rewritten = partial("s", "turn off", "turn on")
    assert "delta" not in rewritten and rewritten["partial"] == "turn off"


def test_frames_are_assembled_in_seq_order() -> None:
    journal = FrameJournal()
    assert journal.accept(0, b"a") == [b"a"]
    assert journal.accept(2, b"c") == []  # waits for 1
    assert journal.ack_seq == 0
    assert journal.accept(1, b"b") == [b"b", b"c"]
    assert journal.ack_seq == 2 and journal.ahead == {}  # handed on, not kept
    assert journal.is_duplicate(1) and journal.accept(1, b"b") == []


def test_a_seq_beyond_the_reorder_window_is_refused() -> None:
    journal = FrameJournal(window=4)
    journal.accept(0, b"a")
    assert journal.accept(4, b"e") == []  # 4 ahead of ackSeq 0: inside the window
    with pytest.raises(ProtocolError) as refused:
        journal.accept(5, b"f")
    assert refused.value.code == "seq_out_of_window" and refused.value.close_code == 1008
    assert 5 not in journal.ahead


def test_audio_ahead_of_a_gap_is_bounded_in_bytes_too() -> None:
    journal = FrameJournal(window=256, max_bytes=10)
    journal.accept(1, b"x" * 6)
    with pytest.raises(ProtocolError) as refused:
        journal.accept(2, b"y" * 6)  # 12 bytes would wait for seq 0
    assert refused.value.code == "seq_out_of_window" and journal.ahead_bytes == 6
    assert journal.accept(0, b"z" * 64) == [b"z" * 64, b"x" * 6]  # the frame at the frontier always goes
    assert journal.ahead_bytes == 0
    journal.accept(3, b"w" * 6)
    journal.forget_ahead()  # what a detached session does: the client resends after ackSeq
    assert journal.ahead == {} and journal.ahead_bytes == 0 and journal.ack_seq == 1


async def test_stable_prefix_and_final_decodes_only_the_tail() -> None:
    sess = session(stable_commit_min_sec=2.0)
    decoder = ScriptedDecoder()
    utterance = VOICE_A[: 3 * SR]
    for _ in range(4):  # four utterances with pauses: commits at the boundaries
        await feed(sess, np.concatenate([utterance, silence(1.0)]))
        sess.schedule(decoder)
        if sess.recognizer.commit_task:
            await sess.recognizer.commit_task
    commits = decoder.by(Priority.COMMIT)
    stable_text = sess.recognizer.stable_text
    assert len(commits) >= 2 and stable_text
    assert sum(c.seconds for c in sess.recognizer.uncommitted) < 4.5  # committed audio is released
    result = await sess.finalize(decoder)
    finals = decoder.by(Priority.FINAL)
    # The final decodes only what no commit covered: at most one utterance.
    assert len(finals) <= 1 and all(c.seconds < 4.5 for c in finals)
    assert result.text.startswith(stable_text) and result.decoded and result.source == "incremental"
    words = result.text.split()
    assert len(words) == len(set(words))  # nothing decoded twice


async def test_cjk_stable_prefix_joins_without_spaces() -> None:
    sess = session(stable_commit_min_sec=2.0)
    decoder = ScriptedDecoder(cjk=True)
    await feed(sess, np.concatenate([VOICE_A[: 3 * SR], silence(1.0)]))
    sess.schedule(decoder)
    assert sess.recognizer.commit_task is not None
    await sess.recognizer.commit_task
    await feed(sess, VOICE_A[3 * SR : 5 * SR])
    result = await sess.finalize(decoder)
    assert " " not in result.text and result.text.startswith(chr(0x4E01))
    assert chr(0x4E02) in result.text  # the tail follows the stable prefix directly


async def test_a_short_chunk_between_pauses_is_kept() -> None:
    sess = session()
    decoder = ScriptedDecoder()
    word = VOICE_A[int(0.3 * SR) : int(0.9 * SR)]  # ~0.6 s "yes."
    await feed(sess, np.concatenate([silence(1.0), word, silence(1.5)]))
    assert sess.gate.accepted == 1  # upstream discarded chunks under 1.5 s
    result = await sess.finalize(decoder)
    assert result.text and decoder.by(Priority.FINAL)[0].seconds >= 0.6


async def test_audio_that_never_filled_a_vad_window_is_decoded_at_stop() -> None:
    sess = session()
    decoder = ScriptedDecoder()
    speech_then_cut = VOICE_A[: 2 * SR + 1000]  # ends mid-window, mid-speech
    await feed(sess, speech_then_cut)
    assert 0 < len(sess.gate.windows.staged) < 2560
    await sess.finalize(decoder)
    (final_call,) = decoder.by(Priority.FINAL)
    assert final_call.seconds * SR >= len(speech_then_cut) - 2560  # the staged tail is in


async def test_all_silence_is_decoded_as_nothing_said() -> None:
    sess = session()
    decoder = ScriptedDecoder()
    await feed(sess, silence(2.0))
    result = await sess.finalize(decoder)
    assert result.text == "" and result.decoded is True  # proven empty, not a guess
    assert decoder.calls == []  # silence is not handed to the model to invent words


async def test_other_voice_is_rejected_from_the_final() -> None:
    sess = session()
    decoder = ScriptedDecoder()
    await feed(sess, np.concatenate([VOICE_A[: 4 * SR], silence(1.0), VOICE_B[: 4 * SR], silence(1.0)]))
    assert sess.gate.accepted == 1 and sess.gate.rejected == 1
    await sess.finalize(decoder)
    (final_call,) = decoder.by(Priority.FINAL)
    assert final_call.seconds < 5.0  # only voice A's chunk


async def test_partials_decode_only_after_the_frontier_and_continue_the_hypothesis() -> None:
    sess = session(partials_enabled=True, partial_interval_sec=0.0, stable_commit_min_sec=2.0)
    decoder = ScriptedDecoder()
    sent: list[str] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        sent.append(data["text"])

    sess.emit = emit
    for _ in range(6):  # ~24 s of dictation with pauses
        for piece in np.array_split(np.concatenate([VOICE_A[: 3 * SR], silence(1.0)]), 8):
            await feed(sess, piece)
            sess.schedule(decoder)
            if sess.recognizer.partial_task:
                await sess.recognizer.partial_task
            if sess.recognizer.commit_task:
                await sess.recognizer.commit_task
    partials = decoder.by(Priority.PARTIAL)
    assert len(partials) > 10 and sent
    assert max(c.seconds for c in partials[-5:]) < 6.0  # bounded by the frontier, not the utterance
    assert any(c.prefix for c in partials)  # later partials continue from the last hypothesis
    assert all(text.startswith(sess.recognizer.stable_text.split(" ")[0]) for text in sent[-3:])
    # Memory stays flat: the raw tail is the partial window (or the fallback span), not 24 s.
    assert sess.recognizer.raw.held <= 30.5 * SR


async def test_no_partial_after_closing() -> None:
    sess = session(partials_enabled=True, partial_interval_sec=0.0)
    decoder = ScriptedDecoder(delay=0.2)
    sent: list[str] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        sent.append(data["text"])

    sess.emit = emit
    await feed(sess, VOICE_A[: 2 * SR])
    sess.schedule(decoder)
    assert sess.recognizer.partial_task is not None
    await sess.finalize(decoder)
    await asyncio.sleep(0.3)
    assert sent == []


@pytest.mark.parametrize("wait", [True, False])
async def test_final_wait_partial_switch(wait: bool) -> None:
    sess = session(partials_enabled=True, partial_interval_sec=0.0, final_wait_partial=wait)
    decoder = ScriptedDecoder(delay=3.0)
    await feed(sess, VOICE_A[: 2 * SR])
    sess.schedule(decoder)
    task = sess.recognizer.partial_task
    assert task is not None
    await asyncio.sleep(0.05)  # the partial is decoding when the stop comes
    await sess.finalize(decoder)
    assert task.done() is wait


async def test_a_partial_scheduled_just_before_the_stop_is_not_decoded() -> None:
    """It would only hold up the final (the final is decoded from the same audio)."""
    sess = session(partials_enabled=True, partial_interval_sec=0.0)
    decoder = ScriptedDecoder(delay=0.2)
    await feed(sess, VOICE_A[: 2 * SR])
    sess.schedule(decoder)
    assert sess.recognizer.partial_task is not None
    await sess.finalize(decoder)  # before the partial's task first ran
    assert [call.priority for call in decoder.calls] == [Priority.FINAL]


class OneDevice(ScriptedDecoder):
    """A device other sessions may hold (``free`` clear): decodes wait for it,
    and a waiting one counts in its job slot as the scheduler counts it; a
    commit then takes 0.3 s."""

    def __init__(self) -> None:
        super().__init__()
        self.free = asyncio.Event()
        self.free.set()

    async def decode(self, samples: np.ndarray, request: TranscribeRequest) -> Transcript:
        slot = request.slot
        assert slot is not None
        slot.waiting += 1
        try:
            await self.free.wait()
        finally:
            slot.waiting -= 1
        if request.priority == Priority.COMMIT:
            await asyncio.sleep(0.3)
        return await super().decode(samples, request)


async def test_no_partial_waits_behind_its_own_commit() -> None:
    """The scheduler runs a commit before any partial, so a partial queued
    with it would decode only after the frontier moved, re-hearing committed
    audio (up to the whole window): under load that batch holds the device
    when the stop comes. A queued partial is dropped when the commit starts,
    none is scheduled while it decodes, and the next hears only the new tail."""
    sess = session(partials_enabled=True, partial_interval_sec=0.0, stable_commit_min_sec=2.0)
    decoder = OneDevice()
    decoder.free.clear()  # another session's batch holds the device
    await feed(sess, VOICE_A[: 2 * SR])
    sess.schedule(decoder)
    queued = sess.recognizer.partial_task
    assert queued is not None and sess.recognizer.commit_task is None
    await asyncio.sleep(0.05)
    await feed(sess, np.concatenate([VOICE_A[2 * SR : 3 * SR], silence(1.0)]))
    sess.schedule(decoder)  # a chunk ends: the commit starts
    commit = sess.recognizer.commit_task
    assert commit is not None and sess.recognizer.partial_task is queued
    decoder.free.set()
    await asyncio.sleep(0.05)
    assert queued.done() and decoder.by(Priority.PARTIAL) == []  # dropped, never decoded
    await feed(sess, VOICE_A[: SR // 2])
    sess.schedule(decoder)
    assert sess.recognizer.partial_task is queued  # none while the commit decodes
    await commit
    await feed(sess, VOICE_A[SR // 2 : SR])
    sess.schedule(decoder)
    assert sess.recognizer.partial_task is not queued
    await sess.recognizer.partial_task
    [heard] = decoder.by(Priority.PARTIAL)
    assert heard.seconds <= (sess.recognizer.raw.length - sess.recognizer.stable_end) / SR + 0.31


@dataclass
class FailingDecoder(ScriptedDecoder):
    """Commits (or native feeds) fail ``failures`` times, then work."""

    failures: int = 1_000_000
    native_fed: list[float] = field(default_factory=list)

    async def decode(self, samples: np.ndarray, request: TranscribeRequest) -> Transcript:
        if request.priority == Priority.COMMIT and self.failures > 0:
            self.failures -= 1
            self.calls.append(Call(request.priority, len(samples) / SR, request.prefix))
            raise RuntimeError("decode failed")
        return await super().decode(samples, request)

    async def native_open(self, *, context: str, language: str | None, chunk_sec: float) -> Any:
        return 0

    async def native_feed(self, state: Any, samples: np.ndarray) -> tuple[Any, str]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("feed failed")
        self.native_fed.append(len(samples) / SR)
        return state + 1, f"hyp{state + 1}"

    async def native_finish(self, state: Any) -> str:
        return f"final after {state} chunks"


async def test_a_failing_commit_backs_off_instead_of_retrying_every_tick() -> None:
    sess = session(stable_commit_min_sec=2.0)
    decoder = FailingDecoder()
    await feed(sess, np.concatenate([VOICE_A[: 3 * SR], silence(1.0)]))
    for _ in range(30):  # 3 s of 0.1 s ticks
        sess.schedule(decoder)
        if sess.recognizer.commit_task:
            await sess.recognizer.commit_task
        await asyncio.sleep(0.1)
    attempts = len(decoder.by(Priority.COMMIT))
    assert 2 <= attempts <= 4  # 0.5 s, 1 s, 2 s apart — not 30 tries
    assert sess.recognizer.commit_backoff.failures == attempts and sess.recognizer.uncommitted
    result = await sess.finalize(decoder)
    assert result.text and result.source == "incremental"  # the final still covers the chunks


async def test_native_streaming_keeps_a_chunk_until_it_was_fed() -> None:
    sess = session(native=True, stream_chunk_sec=1.0)
    decoder = FailingDecoder(failures=1)
    await feed(sess, VOICE_A[: int(2.5 * SR)])
    sess.schedule(decoder)
    assert sess.recognizer.task is not None
    await sess.recognizer.task  # the first feed fails: the chunk stays pending
    assert decoder.native_fed == [] and len(sess.recognizer.pending[0]) == int(2.5 * SR)
    await asyncio.sleep(0.55)  # the first retry waits 0.5 s
    sess.schedule(decoder)
    await sess.recognizer.task
    assert decoder.native_fed == [1.0, 1.0]
    result = await sess.finalize(decoder)
    assert decoder.native_fed == [1.0, 1.0, 0.5]  # every sample fed exactly once
    assert result.text == "final after 3 chunks" and result.source == "native_stream"


async def test_a_failing_native_feed_backs_off_instead_of_retrying_every_tick() -> None:
    now = [0.0]
    sess = DictationSession(
        vad=shared_vad().new_stream(),
        speaker=SpeakerGate(shared_voice_encoder()),
        settings=DictationSettings(native=True, stream_chunk_sec=1.0),
        clock=lambda: now[0],
    )
    decoder = FailingDecoder(failures=3)
    await feed(sess, VOICE_A[: int(1.5 * SR)])
    tries = []
    for tick in range(40):  # 4 s of 0.1 s ticks
        now[0] = tick / 10
        sess.schedule(decoder)
        if sess.recognizer.task is not None:
            tries.append(now[0])
            await sess.recognizer.task
    # failed at 0 s, then retried after 0.5 s, 1 s and 2 s (the third retry succeeds)
    assert tries == [0.0, 0.5, 1.5, 3.5]
    assert decoder.native_fed == [1.0] and sess.recognizer.feed_backoff.failures == 0


async def test_one_finalize_per_session_and_no_audio_kept_after_it() -> None:
    sess = session(stable_commit_min_sec=2.0)
    decoder = ScriptedDecoder()
    await feed(sess, np.concatenate([VOICE_A[: 3 * SR], silence(1.0), VOICE_A[3 * SR : 5 * SR]]))
    first, second = sess.finalize(decoder), sess.finalize(decoder)
    a, b = await asyncio.gather(first, second)
    assert a == b and len(decoder.by(Priority.FINAL)) == 1  # asked twice, decoded once
    assert sess.finished and sess.recognizer.uncommitted == [] and sess.recognizer.raw.held == 0
    assert sess.gate.pending == [] and len(sess.gate.windows.staged) == 0
    await feed(sess, VOICE_A[:SR])  # audio after the final is not taken
    assert sess.recognizer.raw.held == 0


class AlwaysSpeech:
    def window_probs(self, samples: np.ndarray) -> list[float]:
        return [1.0] * (len(samples) // 2560)


@dataclass
class AcceptAll:
    accepted: bool = True
    similarity: float | None = None
    enrolled: bool = False
    embedded: bool = False

    def check(self, samples: np.ndarray) -> AcceptAll:
        return self


async def test_speech_without_a_pause_is_cut_so_the_open_chunk_stays_bounded() -> None:
    gate = SpeechGate(AlwaysSpeech(), AcceptAll())
    chunks = []
    for _ in range(65):  # 65 s of speech, no pause
        chunks += await gate.push(np.full(SR, 0.1, np.float32))
    assert [round(c.seconds) for c in chunks] == [30, 30]
    assert chunks[1].start == chunks[0].end  # contiguous, nothing lost or doubled
    assert len(gate.pending) * 2560 < 6 * SR
