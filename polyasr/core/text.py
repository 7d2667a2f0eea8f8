"""Joining recognized text pieces.

Used wherever audio is decoded in pieces and the texts are put back together:
long batch uploads split at quiet points, the stable prefix of a dictation,
alignment chunks. CJK scripts are written without spaces between words, so
two CJK sides are joined directly; anything else gets one space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polyasr.core.engine import AlignedUnit


def is_cjk(ch: str) -> bool:
    """Han, kana or Hangul (the ranges the join rule treats as space-free)."""
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3040 <= code <= 0x30FF or 0xAC00 <= code <= 0xD7AF


def join_text(left: str, right: str) -> str:
    """``left`` + ``right``, stripped, with a space unless both touching chars are CJK."""
    left, right = left.strip(), right.strip()
    if not left or not right:
        return left or right
    separator = "" if is_cjk(left[-1]) and is_cjk(right[0]) else " "
    return left + separator + right


def join_texts(pieces: list[str]) -> str:
    """Fold :func:`join_text` over ``pieces`` in order."""
    text = ""
    for piece in pieces:
        text = join_text(text, piece)
    return text


@dataclass(frozen=True)
class TimedText:
    """A stretch of the transcript with its times (seconds) and, if aligned, its words."""

    start: float
    end: float
    text: str
    words: list[AlignedUnit] = field(default_factory=list)
    # The repetition-loop guard cut a looping tail out of this stretch's decode.
    loop_cut: bool = False
