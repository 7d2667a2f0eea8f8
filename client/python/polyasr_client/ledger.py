"""Which frames of a session the server has, and which it may still need.

Every payload is kept for the whole utterance, not only until it is acked:
the batch fallback uploads all of it, and a resume can land on a server that
lost the session (``ackSeq`` -1), which then needs every frame again.
"""

from __future__ import annotations


class FrameLedger:
    """Frames numbered from 0 in capture order, and the server's ack frontier."""

    def __init__(self) -> None:
        self._payloads: list[bytes] = []
        self._acked = -1

    @property
    def next_seq(self) -> int:
        """The seq the next frame gets, which is also the exclusive count of
        captured frames (``finalCapturedSeq``)."""
        return len(self._payloads)

    @property
    def acked(self) -> int:
        """Highest seq with every frame ``0..seq`` acknowledged (inclusive), or -1."""
        return self._acked

    def add(self, pcm: bytes) -> int:
        """Record a captured payload; returns its seq."""
        self._payloads.append(bytes(pcm))
        return len(self._payloads) - 1

    def payload(self, seq: int) -> bytes:
        return self._payloads[seq]

    def ack(self, ack_seq: int) -> None:
        """An ``ack`` on the live connection. Acks from a connection that is
        being replaced may still trickle in, so the frontier never moves back."""
        self._acked = max(self._acked, min(ack_seq, self.next_seq - 1))

    def rewind(self, server_ack_seq: int) -> None:
        """A ``resumed`` reply is authoritative, even below what was acked
        before: a server that lost the session must get everything again."""
        self._acked = max(-1, min(server_ack_seq, self.next_seq - 1))

    def unacked(self) -> list[int]:
        """Seqs the server has not acknowledged, in order: what a resume resends."""
        return list(range(self._acked + 1, self.next_seq))

    def pcm(self) -> bytes:
        """The whole utterance as one PCM16LE buffer, for the batch fallback."""
        return b"".join(self._payloads)
