"""Language normalization: BCP-47 codes and Qwen names to the Qwen name.

Every endpoint that takes a ``language`` (batch, WS ``start``, align) goes
through :func:`normalize_language`, so ``zh``, ``zh-CN``, ``Chinese`` and
``chinese`` all reach the model as ``Chinese``. The models raise on names they
do not know, so an unknown value is rejected here with the supported list
rather than surfacing as a 500 from deep inside a decode.
"""

from __future__ import annotations

# The 30 languages Qwen3-ASR recognizes, keyed by lower-case code.
CODE_TO_NAME: dict[str, str] = {
    "zh": "Chinese",
    "zh-cn": "Chinese",
    "zh-hk": "Cantonese",
    "yue": "Cantonese",
    "en": "English",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
    # Filipino is supported by the model but missing from the upstream list.
    "fil": "Filipino",
    "tl": "Filipino",
}

SUPPORTED_NAMES: tuple[str, ...] = tuple(sorted(set(CODE_TO_NAME.values())))
_NAME_BY_LOWER = {name.lower(): name for name in SUPPORTED_NAMES}

# The forced aligner's 11 languages.
ALIGNER_NAMES: tuple[str, ...] = (
    "Cantonese",
    "Chinese",
    "English",
    "French",
    "German",
    "Italian",
    "Japanese",
    "Korean",
    "Portuguese",
    "Russian",
    "Spanish",
)


class UnsupportedLanguage(ValueError):
    """A ``language`` that is neither a known code nor a supported Qwen name."""

    def __init__(self, value: str) -> None:
        super().__init__(
            f"unsupported language {value!r}; use a code such as 'en' or 'zh', "
            f"or one of: {', '.join(SUPPORTED_NAMES)}"
        )
        self.value = value


def normalize_language(value: str | None) -> str | None:
    """Return the Qwen language name for ``value``, or ``None`` for auto-detect.

    Region subtags are stripped (``en-US`` → ``en``) except ``zh-HK``, which
    names Cantonese; ``_`` is accepted as a subtag separator.
    """
    if value is None:
        return None
    raw = value.strip()
    if not raw or raw.lower() == "auto":
        return None
    key = raw.lower().replace("_", "-")
    if key in CODE_TO_NAME:
        return CODE_TO_NAME[key]
    if key in _NAME_BY_LOWER:
        return _NAME_BY_LOWER[key]
    primary = key.split("-", 1)[0]
    if primary in CODE_TO_NAME:
        return CODE_TO_NAME[primary]
    raise UnsupportedLanguage(raw)
