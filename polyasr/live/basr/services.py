"""What a live connection needs from the process: one instance per app, shared by the BASR
and Realtime sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyasr.align.dictation import DictationAligner
from polyasr.archive.connection import ConnectionArchive
from polyasr.audio.speech import VadStream
from polyasr.dictation.gate import SpeakerCheck
from polyasr.dictation.recognizer import DictationSettings, SessionDecoder
from polyasr.dictation.session import DictationSession
from polyasr.live.basr.sessions import SessionRegistry
from polyasr.live.basr.wire import (
    WsLimits,
)
from polyasr.models.health import SessionOutcome


class Manager(Protocol):
    def hold(self, name: str) -> Any: ...

    def touch(self, name: str) -> None: ...


def _no_session_end(outcome: SessionOutcome) -> None:
    return None


@dataclass
class LiveServices:
    """What a connection needs from the process (one instance per app)."""

    registry: SessionRegistry
    decoder: SessionDecoder
    manager: Manager
    settings: DictationSettings
    new_vad: Callable[[], VadStream]
    new_speaker: Callable[[], SpeakerCheck]
    new_log: Callable[[], ConnectionArchive]
    aligner: DictationAligner  # times the words of a dictation that asks for them
    limits: WsLimits = field(default_factory=WsLimits)
    # Once per decoded stop (not replays): what the session says about the model.
    on_session_end: Callable[[SessionOutcome], None] = _no_session_end

    def new_session(
        self, context: str, language: str | None, *, words: bool = False, confidence: bool = False
    ) -> DictationSession:
        """A new dictation; one that asks for ``words`` tells them what it decodes,
        one that asks for ``confidence`` keeps the scores of its decodes."""
        session = DictationSession(
            self.new_vad(), self.new_speaker(), self.settings, context, language, confidence=confidence
        )
        if words:
            session.listener = self.aligner.words(session.hints)
        return session
