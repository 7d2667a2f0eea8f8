"""The diarization evaluation set in tests/data/diarize and how it is scored.

The set (made by ``python -m bench.make_diarize_set``) is synthesized
conversations of 2-4 espeak-ng voices, each an Ogg Opus file and a reference RTTM;
``set.json`` lists them with their speaker count and which few the CI test
uses. Scoring is ``pyannote.metrics``' diarization error rate: missed speech +
false alarm + speaker confusion, over the reference speech time, with the
hypothesis speakers mapped to the reference ones by the optimal one-to-one
assignment. Overlapped speech is scored (never skipped): a system that names one
speaker per moment loses the second speaker of every overlap as missed speech.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate
from pyannote.metrics.identification import IdentificationErrorRate

SET_DIR = Path(__file__).resolve().parent / "data" / "diarize"
SR = 16_000
COLLARS = (0.25, 0.0)  # the customary 0.25 s forgiveness around each reference boundary, and none


@dataclass(frozen=True)
class Conversation:
    name: str
    speakers: int
    duration: float
    group: str  # dev (what the clustering was tuned on), held-out or close (see bench.make_diarize_set)
    ci: bool

    @property
    def audio(self) -> Path:
        return SET_DIR / f"{self.name}.opus"

    def reference(self) -> Annotation:
        return load_rttm(SET_DIR / f"{self.name}.rttm", self.name)

    def uem(self) -> Timeline:
        """The scored extent: the whole file (so silence the system calls speech counts)."""
        return Timeline([Segment(0.0, self.duration)], uri=self.name)


def conversations(ci_only: bool = False) -> list[Conversation]:
    manifest = json.loads((SET_DIR / "set.json").read_text(encoding="utf-8"))
    found = [
        Conversation(c["name"], c["speakers"], c["duration"], c["group"], c["ci"])
        for c in manifest["conversations"]
    ]
    return [c for c in found if c.ci or not ci_only]


def voice_clips() -> dict[str, Path]:
    """Each voice's reference clip (other words than any turn), by voice id."""
    return {p.stem: p for p in sorted((SET_DIR / "voices").glob("*.opus"))}


def load_rttm(path: Path, uri: str) -> Annotation:
    """An RTTM file's ``SPEAKER`` lines as an annotation (one track per line)."""
    annotation = Annotation(uri=uri)
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            annotation[Segment(start, start + duration), len(annotation)] = fields[7]
    return annotation


def annotation_of(segments: Iterable[dict[str, Any]], uri: str) -> Annotation:
    """A ``diarized_json`` response's segments as an annotation."""
    annotation = Annotation(uri=uri)
    for index, seg in enumerate(segments):
        if seg["end"] > seg["start"]:
            annotation[Segment(seg["start"], seg["end"]), index] = seg["speaker"]
    return annotation


def diarize(http: httpx.Client, conversation: Conversation, fields: dict[str, Any]) -> Annotation:
    """The server's ``diarized_json`` answer for one conversation, as an annotation."""
    response = http.post(
        "/v1/audio/transcriptions",
        files={"file": (conversation.audio.name, conversation.audio.read_bytes())},
        data={"model": "polyasr", "response_format": "diarized_json", **fields},
    )
    response.raise_for_status()
    return annotation_of(response.json()["segments"], conversation.name)


def known_speakers(conversation: Conversation) -> dict[str, list[str]]:
    """Form fields naming every voice of the conversation, each with its
    reference clip as a data URL (what OpenAI's known-speaker fields take)."""
    clips = voice_clips()
    names = sorted(conversation.reference().labels())
    references = [
        "data:audio/ogg;base64," + base64.b64encode(clips[name].read_bytes()).decode() for name in names
    ]
    return {"known_speaker_names[]": names, "known_speaker_references[]": references}


def one_speaker(conversation: Conversation) -> Annotation:
    """Everything the reference calls speech, given to one speaker: the score of
    a system that finds speech but never tells voices apart."""
    hypothesis = Annotation(uri=conversation.name)
    for index, segment in enumerate(conversation.reference().get_timeline().support()):
        hypothesis[Segment(segment.start, segment.end), index] = "A"
    return hypothesis


def identification_error(conversation: Conversation, hypothesis: Annotation, collar: float = 0.25) -> float:
    """Like the DER, but a speaker counts as right only under its own name (no
    mapping): how well known-speaker references name the turns."""
    metric = IdentificationErrorRate(collar=collar, skip_overlap=False)
    return float(metric(conversation.reference(), hypothesis, uem=conversation.uem()))


@dataclass
class Score:
    """Summed error seconds over a group of conversations, per collar."""

    totals: dict[float, dict[str, float]]
    files: int = 0
    count_right: int = 0

    @classmethod
    def empty(cls) -> Score:
        keys = ("total", "missed detection", "false alarm", "confusion")
        return cls({collar: dict.fromkeys(keys, 0.0) for collar in COLLARS})

    def add(self, conversation: Conversation, hypothesis: Annotation) -> dict[float, float]:
        """Score one conversation into the group; returns its own DER per collar."""
        reference = conversation.reference()
        own = {}
        for collar in COLLARS:
            metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
            parts = metric.compute_components(reference, hypothesis, uem=conversation.uem())
            for key in self.totals[collar]:
                self.totals[collar][key] += parts[key]
            own[collar] = metric.compute_metric(parts)
        self.files += 1
        self.count_right += len(hypothesis.labels()) == len(reference.labels())
        return own

    def der(self, collar: float) -> float:
        t = self.totals[collar]
        return (t["missed detection"] + t["false alarm"] + t["confusion"]) / t["total"]

    def share(self, collar: float, key: str) -> float:
        return self.totals[collar][key] / self.totals[collar]["total"]
