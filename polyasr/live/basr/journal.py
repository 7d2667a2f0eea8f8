"""The frame journal of one BASR dictation session: which
``seq`` numbers arrived, the contiguous frontier ``ackSeq``, and the frames
that arrived ahead of a gap.

Frames leave the journal as soon as their turn comes: the payloads handed out
in ``seq`` order go to the archive and the speech pipeline, and the journal
keeps only the counters. What it holds is therefore bounded by the reorder
window, in frames and in bytes: a ``seq`` more than ``window`` frames ahead of
the frontier, or a frame that would put more than ``max_bytes`` of audio
ahead of it, is refused (``seq_out_of_window``) instead of being buffered for
a gap that may never close. A frame count alone does not bound memory (256
frames of 256 KiB are 64 MiB per session).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polyasr.live.basr.wire import SEQ_OUT_OF_WINDOW
from polyasr.live.refusals import protocol_error


@dataclass
class FrameJournal:
    """Seq assembly for one session; survives reconnects with its session."""

    window: int = 256
    max_bytes: int = 2_097_152
    next_seq: int = 0
    ahead: dict[int, bytes] = field(default_factory=dict)  # arrived before their turn
    ahead_bytes: int = 0

    @property
    def ack_seq(self) -> int:
        """The highest ``seq`` such that all of ``0..seq`` arrived; ``-1`` before frame 0."""
        return self.next_seq - 1

    @property
    def has_audio(self) -> bool:
        return self.next_seq > 0 or bool(self.ahead)

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.next_seq or seq in self.ahead

    def accept(self, seq: int, pcm: bytes) -> list[bytes]:
        """Take one new frame; return the payloads now ready, in ``seq`` order.

        A frame ahead of a gap waits until the gap is filled, so the pipeline
        always hears audio in the order it was spoken. A duplicate returns
        nothing (callers acknowledge it without re-processing).
        """
        if self.is_duplicate(seq):
            return []
        if seq - self.ack_seq > self.window:
            raise protocol_error(SEQ_OUT_OF_WINDOW, seq=seq, ack_seq=self.ack_seq, window=self.window)
        if seq != self.next_seq and self.ahead_bytes + len(pcm) > self.max_bytes:
            held, limit = self.ahead_bytes, self.max_bytes
            raise protocol_error(SEQ_OUT_OF_WINDOW, seq=seq, ack_seq=self.ack_seq, bytes=held, limit=limit)
        self.ahead[seq] = pcm
        self.ahead_bytes += len(pcm)
        ready = []
        while self.next_seq in self.ahead:
            payload = self.ahead.pop(self.next_seq)
            self.ahead_bytes -= len(payload)
            ready.append(payload)
            self.next_seq += 1
        return ready

    def forget_ahead(self) -> None:
        """Drop frames waiting for a gap. They were never acknowledged (``ackSeq``
        stops at the gap), so the client resends them after a resume: a
        detached or finished session needs none of them."""
        self.ahead.clear()
        self.ahead_bytes = 0
