"""Language normalization."""

from __future__ import annotations

import pytest

from polyasr.core.languages import SUPPORTED_NAMES, UnsupportedLanguage, normalize_language
from polyasr.live.realtime.events import RealtimeError, SessionConfig, apply_update


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("zh", "Chinese"),
        ("zh-CN", "Chinese"),
        ("zh-HK", "Cantonese"),
        ("zh_hk", "Cantonese"),
        ("yue", "Cantonese"),
        ("en-US", "English"),
        ("pt-BR", "Portuguese"),
        ("fil", "Filipino"),
        ("tl", "Filipino"),
        ("Chinese", "Chinese"),
        ("japanese", "Japanese"),
        ("  de ", "German"),
        (None, None),
        ("", None),
        ("auto", None),
    ],
)
def test_normalize(given: str | None, expected: str | None) -> None:
    assert normalize_language(given) == expected


def test_thirty_languages() -> None:
    assert len(SUPPORTED_NAMES) == 30 and "Filipino" in SUPPORTED_NAMES


def test_unknown_language_lists_supported() -> None:
    with pytest.raises(UnsupportedLanguage, match="Chinese") as info:
        normalize_language("klingon")
    assert "klingon" in str(info.value)


def test_a_realtime_session_echoes_the_language_as_sent_and_tells_the_model_its_name() -> None:
    def update(language: object) -> SessionConfig:
        transcription = {"language": language}
        event = {"type": "session.update", "session": {"audio": {"input": {"transcription": transcription}}}}
        return apply_update(SessionConfig(), event, 4096, format_locked=False)

    assert (update("en").language, update("en").model_language) == ("en", "English")
    assert (update("zh-HK").language, update("zh-HK").model_language) == ("zh-HK", "Cantonese")
    assert (update("").language, update(None).model_language) == (None, None)  # auto-detect
    for wrong in (5, ["en"], {"code": "en"}, True):
        with pytest.raises(RealtimeError) as refused:
            update(wrong)
        assert (refused.value.code, refused.value.param) == (
            "invalid_value",
            "session.audio.input.transcription.language",
        )
