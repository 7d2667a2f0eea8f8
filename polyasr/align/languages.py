"""Which language the aligner is told: a pinned one checked against the aligner's set, a
detected one mapped to the aligner's names, or a guess from the text's script.
"""

from __future__ import annotations

from polyasr.align.errors import AlignValueError
from polyasr.core.languages import ALIGNER_NAMES, UnsupportedLanguage, normalize_language
from polyasr.core.text import is_cjk

# Languages


def unsupported(what: str) -> AlignValueError:
    return AlignValueError(
        f"{what} is not supported by the forced aligner; supported: {', '.join(ALIGNER_NAMES)}"
    )


def aligner_language(value: str | None) -> str | None:
    """Normalize a requested ``language`` and check the aligner knows it.

    ``None`` means auto-detect. Checked before any work, so a request in one
    of the 19 languages the ASR model knows but the aligner does not fails
    fast with the list it may use.
    """
    name = normalize_language(value)
    if name is not None and name not in ALIGNER_NAMES:
        raise unsupported(f"language {name!r}")
    return name


def qwen_name(detected: str | None) -> str | None:
    """A detected language as its Qwen name (models report names, not codes)."""
    if not detected:
        return None
    try:
        return normalize_language(detected)
    except UnsupportedLanguage:
        return detected


def language_for_script(text: str) -> str:
    """An aligner language for text whose language nobody named or detected.

    The aligner uses the language only to pick its word splitter (nagisa for
    Japanese, soynlp for Korean, whitespace plus single CJK characters for
    the rest), so the script of the text decides.
    """
    if any(0x3040 <= ord(ch) <= 0x30FF for ch in text):
        return "Japanese"
    if any(0xAC00 <= ord(ch) <= 0xD7AF for ch in text):
        return "Korean"
    return "Chinese" if any(is_cjk(ch) for ch in text) else "English"
