"""Language normalization."""

from __future__ import annotations

import pytest

from polyasr.core.languages import SUPPORTED_NAMES, UnsupportedLanguage, normalize_language


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
