"""Synthesize the diarization evaluation set: conversations of 2, 3 and 4
espeak-ng voices with reference speaker timelines.

    python -m bench.make_diarize_set            # rewrites tests/data/diarize/

Every conversation is a seeded plan of turns (1-8 s each, a quarter of them
under 2 s), separated by pauses or overlapping the turn before, mixed at 16 kHz
mono and written as Ogg Opus at 24 kbit/s (a tenth of FLAC's size; the encoder
neither shifts the timeline nor moves a voice's Resemblyzer embedding, cosine
0.997 to the lossless mix) beside its reference timeline in RTTM (the format
``pyannote`` reads; one line per turn, the speaker named by its voice). Each
voice also gets a reference clip of other words, for known-speaker requests.
The files are committed, so neither CI nor the bench needs espeak-ng; rerun this
only to change the set (espeak-ng 1.51 made the committed one).

Groups. ``dev`` (the CI conversations among them) uses the four voices
that a probe of 21 espeak-ng voices at three pitches found furthest apart for
Resemblyzer (the speaker encoder the service uses): every pair scores at most
0.57 cosine similarity across different sentences, where one voice reading two
sentences scores 0.94 or more. The service's clustering threshold was tuned on
these conversations, so ``held-out`` uses four other voices, found the same
way among the rest (pairs at most 0.60), for figures nobody tuned on; keep it
that way. It was not kept that way (the speaker count rule was later tuned on
every group), so ``fresh`` adds four more voices (pairs at most 0.66, a little
closer than the others). ``close`` is one conversation of two plain English variants that the
encoder scores 0.74-0.76 alike (``en+m3``, ``en+croak``, ``en-gb+f4`` ... score
0.80-0.95 against each other: to this encoder they are nearly one speaker).
``short`` is one conversation of held-out voices where two turns in five are a
backchannel word or two (0.3-0.9 s) between short pauses, shorter than the
turns of 1-8 s elsewhere.
There is no real speech in the set: the committed ``tests/data/voice_*.wav``
are espeak-ng clips too (``voice_b`` is close to ``fr_high`` here).
"""

from __future__ import annotations

import io
import json
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from tests.diarize_set import SET_DIR, SR

# id -> (espeak-ng voice+variant, pitch 0-99, speed in words per minute)
VOICES: dict[str, tuple[str, int, int]] = {
    "klatt_low": ("en-us+klatt", 15, 140),
    "fr_high": ("fr+f3", 90, 165),
    "max_high": ("en+RicishayMax", 90, 150),
    "anika_high": ("en+anika", 90, 175),
    # held out: new voices, as far apart as the four above
    "andy_high": ("en+Andy", 90, 150),
    "steph_high": ("en+steph", 90, 170),
    "edward_low": ("en+edward", 20, 135),
    "pt_high": ("pt+f4", 90, 160),
    # fresh: four more, added after the speaker count rule had been tuned on all of the above
    "belinda_high": ("en+belinda", 90, 160),
    "f5_mid": ("en+f5", 55, 150),
    "storm_mid": ("en+Storm", 55, 140),
    "it_low": ("it+m2", 20, 155),
    # close: two plain English voices that Resemblyzer scores 0.74-0.76 alike
    "m3_mid": ("en+m3", 35, 150),
    "klatt_mid": ("en-us+klatt", 50, 145),
}

WORD_LIST = """
able about after again almost always animal answer apple autumn basket beach
before behind better bird blanket boat bottle bread bridge bright brother
button camera candle careful castle chair cheese city clever cloud coffee
corner country cousin danger dinner doctor dollar double dragon early engine
evening family farmer feather finger flower forest friend garden gentle glass
golden grass happy harbor heavy hidden honest horse island jacket kitchen
ladder lemon letter little market meadow middle minute monkey morning mountain
music narrow number ocean orange paper pencil people pepper picture pocket
purple quiet rabbit river rocket salt season shadow silver simple sister
window winter yellow yesterday
"""
WORDS = WORD_LIST.split()

REFERENCE_TEXT = (
    "This is my usual speaking voice. I am reading a short passage so that "
    "you can recognise me later in the recording."
)

OPUS_BITRATE = 24_000
LEVEL_RMS = 0.08  # every turn at the same loudness: level is no cue to who speaks
MIN_TURN, MAX_TURN = 1.0, 8.0


@dataclass(frozen=True)
class Plan:
    """One conversation: its voices (in first-speaking order), seed and group
    (``dev``: the voices the service's clustering was tuned on; ``held-out``:
    other voices, for figures nobody tuned on; ``fresh``: four more, made after
    the service had been tuned on all the others; ``close``: two voices the
    encoder hardly tells apart; ``short``: backchannels under a second between
    the turns)."""

    name: str
    voices: tuple[str, ...]
    seconds: float
    seed: int
    group: str = "dev"
    ci: bool = False
    backchannels: float = 0.0  # share of turns that are one short word ("yes", "right") instead


PLANS = (
    Plan("spk2_a", ("klatt_low", "fr_high"), 20, 201, ci=True),
    Plan("spk2_b", ("max_high", "anika_high"), 20, 202, ci=True),
    Plan("spk2_c", ("anika_high", "klatt_low"), 36, 203),
    Plan("spk3_a", ("fr_high", "max_high", "klatt_low"), 22, 301, ci=True),
    Plan("spk3_b", ("anika_high", "fr_high", "max_high"), 36, 302),
    Plan("spk3_c", ("klatt_low", "anika_high", "fr_high"), 36, 303),
    Plan("spk4_a", ("klatt_low", "fr_high", "max_high", "anika_high"), 40, 401),
    Plan("spk4_b", ("anika_high", "max_high", "klatt_low", "fr_high"), 40, 402),
    Plan("ho2_a", ("andy_high", "edward_low"), 30, 501, "held-out"),
    Plan("ho2_b", ("pt_high", "steph_high"), 30, 502, "held-out"),
    Plan("ho3_a", ("steph_high", "edward_low", "andy_high"), 36, 601, "held-out"),
    Plan("ho3_b", ("edward_low", "pt_high", "steph_high"), 36, 602, "held-out"),
    Plan("ho4_a", ("pt_high", "andy_high", "steph_high", "edward_low"), 40, 701, "held-out"),
    Plan("fresh2_a", ("belinda_high", "storm_mid"), 30, 1001, "fresh"),
    Plan("fresh2_b", ("it_low", "f5_mid"), 30, 1002, "fresh"),
    Plan("fresh3_a", ("f5_mid", "it_low", "belinda_high"), 36, 1101, "fresh"),
    Plan("fresh3_b", ("storm_mid", "belinda_high", "it_low"), 36, 1102, "fresh"),
    Plan("fresh4_a", ("it_low", "storm_mid", "f5_mid", "belinda_high"), 40, 1201, "fresh"),
    Plan("close2_a", ("m3_mid", "klatt_mid"), 30, 801, "close"),
    Plan("short2_a", ("andy_high", "edward_low"), 40, 901, "short", backchannels=0.4),
)

BACKCHANNELS = ("yes", "right", "okay", "sure", "no", "really", "mm hmm", "I see")


def synthesize(voice: str, text: str) -> np.ndarray:
    """``text`` in ``voice`` as 16 kHz float32, leading and trailing silence cut."""
    name, pitch, speed = VOICES[voice]
    args = ["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    raw = subprocess.run(args, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(raw)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).astype(np.float32) / 32768
    audio = resample_poly(pcm, SR, rate).astype(np.float32)
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[voiced[0] : voiced[-1] + 1]
    return audio * (LEVEL_RMS / float(np.sqrt(np.mean(audio**2))))


def turn(voice: str, rng: np.random.Generator) -> np.ndarray:
    """One turn of random words lasting 1-8 s (under 2 s a quarter of the time)."""
    target = rng.uniform(MIN_TURN, 2.0) if rng.random() < 0.25 else rng.uniform(2.0, MAX_TURN)
    words_per_sec = VOICES[voice][2] / 60
    count = max(1, round(target * words_per_sec))
    words = list(rng.choice(WORDS, size=count + 8))
    audio = synthesize(voice, " ".join(words[:count]))
    while len(audio) > MAX_TURN * SR and count > 1:
        count -= 1
        audio = synthesize(voice, " ".join(words[:count]))
    while len(audio) < MIN_TURN * SR:
        count += 1
        audio = synthesize(voice, " ".join(words[:count]))
    return audio


def conversation(plan: Plan) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """The mixed audio and its turns ``(start, end, voice)`` in seconds.

    Every voice speaks once in plan order first, then the next speaker is any
    other voice. Each turn starts 0.1-1.0 s after the latest turn ended, or one
    time in three overlaps it by 0.3-1.5 s (at most 40 % of either turn); a
    backchannel comes 0.1-0.6 s after the turn before, and the next turn as soon
    after it."""
    rng = np.random.default_rng(plan.seed)
    pieces: list[tuple[int, np.ndarray, str]] = []
    cursor, last_len, previous, was_short = int(0.5 * SR), 0, "", False
    while cursor < plan.seconds * SR or len(pieces) < len(plan.voices):
        if len(pieces) < len(plan.voices):
            voice = plan.voices[len(pieces)]
        else:
            voice = str(rng.choice([v for v in plan.voices if v != previous]))
        short = bool(plan.backchannels) and len(pieces) >= len(plan.voices)
        short = short and rng.random() < plan.backchannels
        audio = synthesize(voice, str(rng.choice(BACKCHANNELS))) if short else turn(voice, rng)
        if short or was_short:  # a backchannel stands alone: a short pause on either side
            start = cursor + int(rng.uniform(0.1, 0.6) * SR)
        elif pieces and rng.random() < 0.3:
            overlap = min(rng.uniform(0.3, 1.5) * SR, 0.4 * min(last_len, len(audio)))
            start = cursor - int(overlap)
        else:
            start = cursor + int(rng.uniform(0.1, 1.0) * SR)
        pieces.append((start, audio, voice))
        cursor, last_len, previous, was_short = max(cursor, start + len(audio)), len(audio), voice, short
    mix = np.zeros(cursor + int(0.5 * SR), np.float32)
    for start, audio, _ in pieces:
        mix[start : start + len(audio)] += audio
    mix *= min(1.0, 0.95 / float(np.max(np.abs(mix))))
    turns = [(start / SR, (start + len(audio)) / SR, voice) for start, audio, voice in pieces]
    return mix, turns


def opus(samples: np.ndarray) -> bytes:
    """16 kHz mono float32 as Ogg Opus at ``OPUS_BITRATE``."""
    buf = io.BytesIO()
    # bitexact: no random Ogg stream serial or encoder tag, so a rerun rewrites identical files
    with av.open(buf, mode="w", format="ogg", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libopus", rate=SR)
        stream.bit_rate = OPUS_BITRATE
        stream.layout = "mono"
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SR
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SR)  # frames the encoder takes
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def overlap_seconds(turns: list[tuple[float, float, str]]) -> float:
    """Seconds where two or more turns sound at once."""
    edges = sorted([(s, 1) for s, _, _ in turns] + [(e, -1) for _, e, _ in turns])
    total, active, since = 0.0, 0, 0.0
    for time, step in edges:
        if active >= 2:
            total += time - since
        active, since = active + step, time
    return total


def write_rttm(path: Path, uri: str, turns: list[tuple[float, float, str]]) -> None:
    lines = [f"SPEAKER {uri} 1 {s:.3f} {e - s:.3f} <NA> <NA> {v} <NA> <NA>" for s, e, v in turns]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    (SET_DIR / "voices").mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    for voice in VOICES:
        clip = synthesize(voice, REFERENCE_TEXT)
        (SET_DIR / "voices" / f"{voice}.opus").write_bytes(opus(clip))
    entries = []
    for plan in PLANS:
        mix, turns = conversation(plan)
        (SET_DIR / f"{plan.name}.opus").write_bytes(opus(mix))
        write_rttm(SET_DIR / f"{plan.name}.rttm", plan.name, turns)
        lengths = [e - s for s, e, _ in turns]
        entries.append(
            {
                "name": plan.name,
                "speakers": len(plan.voices),
                "group": plan.group,
                "ci": plan.ci,
                "duration": round(len(mix) / SR, 3),
                "turns": len(turns),
                "shortest_turn": round(min(lengths), 3),
                "turns_under_2s": sum(length < 2.0 for length in lengths),
                "overlap": round(overlap_seconds(turns), 3),
            }
        )
        print(entries[-1])
    manifest = {
        "made_by": "python -m bench.make_diarize_set",
        "espeak_ng": version.stdout.strip(),
        "voices": {v: f"-v {n} -p {p} -s {s}" for v, (n, p, s) in VOICES.items()},
        "conversations": entries,
    }
    (SET_DIR / "set.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
