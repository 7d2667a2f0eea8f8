"""Alignment logic as pure functions, on fixed aligner outputs: sentence
grouping for Chinese, Japanese, English, Korean and mixed text, time clamping,
the coverage fallback, chunk cut points, transcript sharing, and the manifest
path rules. Expected segments are written out in full."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from polyasr.align.chunks import choose_cut, pauses, plan_chunks, split_text
from polyasr.align.data import Segment
from polyasr.align.errors import AlignValueError, ManifestError, ManifestForbidden
from polyasr.align.languages import aligner_language, language_for_script
from polyasr.align.manifest import check_manifest
from polyasr.align.timing import chunk_segments, coverage_fallback, group_sentences, tidy_times
from polyasr.api.routes.align import is_loopback
from polyasr.core.config import ConfigError, load_settings
from polyasr.core.engine import AlignedUnit as U
from polyasr.core.text import join_texts


def seg(text: str, words: list[tuple[str, float, float]]) -> Segment:
    units = [U(*w) for w in words]
    return Segment(text, units[0].start, units[-1].end, units)


def per_char(chars: str, step: float = 0.2) -> list[U]:
    return [U(ch, round(i * step, 3), round((i + 1) * step, 3)) for i, ch in enumerate(chars)]


# --------------------------------------------------------------------------- #
# Grouping
# --------------------------------------------------------------------------- #


def test_chinese_characters_and_full_width_terminators() -> None:
    text = "大家好，今天学习。再见！"
    assert group_sentences(text, per_char("大家好今天学习再见")) == [
        seg(
            "大家好，今天学习。",
            [
                ("大", 0.0, 0.2),
                ("家", 0.2, 0.4),
                ("好", 0.4, 0.6),
                ("今", 0.6, 0.8),
                ("天", 0.8, 1.0),
                ("学", 1.0, 1.2),
                ("习", 1.2, 1.4),
            ],
        ),
        seg("再见！", [("再", 1.4, 1.6), ("见", 1.6, 1.8)]),
    ]


def test_english_words_get_their_own_times() -> None:
    # Upstream compared single characters with word units: every word but the
    # first got a zero-length time at one point. Here each word keeps its own.
    text = "Hello, world. It costs 3.5 dollars, e.g., today! Really?"
    units = [
        U("Hello", 0.0, 0.4),
        U("world", 0.5, 0.9),
        U("It", 1.2, 1.3),
        U("costs", 1.3, 1.7),
        U("35", 1.8, 2.3),
        U("dollars", 2.3, 2.8),
        U("eg", 2.9, 3.1),
        U("today", 3.1, 3.5),
        U("Really", 3.9, 4.3),
    ]
    assert group_sentences(text, units) == [
        seg("Hello, world.", [("Hello", 0.0, 0.4), ("world", 0.5, 0.9)]),
        seg(
            "It costs 3.5 dollars, e.g., today!",
            [
                ("It", 1.2, 1.3),
                ("costs", 1.3, 1.7),
                ("3.5", 1.8, 2.3),
                ("dollars", 2.3, 2.8),
                ("e.g", 2.9, 3.1),
                ("today", 3.1, 3.5),
            ],
        ),
        seg("Really?", [("Really", 3.9, 4.3)]),
    ]


def test_japanese_tokenizer_words() -> None:
    text = "こんにちは、世界。今日は晴れです。"
    units = [
        U("こんにちは", 0.0, 0.5),
        U("世界", 0.6, 1.0),
        U("今日", 1.2, 1.5),
        U("は", 1.5, 1.6),
        U("晴れ", 1.6, 2.0),
        U("です", 2.0, 2.3),
    ]
    assert group_sentences(text, units) == [
        seg("こんにちは、世界。", [("こんにちは", 0.0, 0.5), ("世界", 0.6, 1.0)]),
        seg(
            "今日は晴れです。", [("今日", 1.2, 1.5), ("は", 1.5, 1.6), ("晴れ", 1.6, 2.0), ("です", 2.0, 2.3)]
        ),
    ]


def test_korean_sub_word_units() -> None:
    text = "안녕하세요 세계. 반갑습니다!"
    units = [U("안녕", 0.0, 0.3), U("하세요", 0.3, 0.8), U("세계", 0.9, 1.3), U("반갑습니다", 1.6, 2.4)]
    assert group_sentences(text, units) == [
        seg("안녕하세요 세계.", [("안녕", 0.0, 0.3), ("하세요", 0.3, 0.8), ("세계", 0.9, 1.3)]),
        seg("반갑습니다!", [("반갑습니다", 1.6, 2.4)]),
    ]


def test_mixed_chinese_and_english() -> None:
    text = "我们用Python写代码。Then we test it."
    units = [
        U("我", 0.0, 0.2),
        U("们", 0.2, 0.4),
        U("用", 0.4, 0.6),
        U("Python", 0.6, 1.1),
        U("写", 1.1, 1.3),
        U("代", 1.3, 1.5),
        U("码", 1.5, 1.7),
        U("Then", 2.0, 2.3),
        U("we", 2.3, 2.5),
        U("test", 2.5, 2.9),
        U("it", 2.9, 3.1),
    ]
    assert group_sentences(text, units) == [
        seg(
            "我们用Python写代码。",
            [
                ("我", 0.0, 0.2),
                ("们", 0.2, 0.4),
                ("用", 0.4, 0.6),
                ("Python", 0.6, 1.1),
                ("写", 1.1, 1.3),
                ("代", 1.3, 1.5),
                ("码", 1.5, 1.7),
            ],
        ),
        seg("Then we test it.", [("Then", 2.0, 2.3), ("we", 2.3, 2.5), ("test", 2.5, 2.9), ("it", 2.9, 3.1)]),
    ]


def test_quotes_ellipses_and_apostrophes_stay_in_their_sentence() -> None:
    text = 'He said "don\'t." Then... nothing'
    units = [U("He", 0, 1), U("said", 1, 2), U("don't", 2, 3), U("Then", 4, 5), U("nothing", 6, 7)]
    assert group_sentences(text, units) == [
        seg('He said "don\'t."', [("He", 0, 1), ("said", 1, 2), ("don't", 2, 3)]),
        seg("Then...", [("Then", 4, 5)]),
        seg("nothing", [("nothing", 6, 7)]),
    ]


def test_a_word_the_aligner_skipped_is_kept_and_timed_between_its_neighbours() -> None:
    text = "Hello brave new world."
    units = [U("Hello", 0.0, 0.4), U("world", 1.0, 1.4)]
    assert group_sentences(text, units) == [
        seg(
            "Hello brave new world.",
            [("Hello", 0.0, 0.4), ("brave", 0.4, 0.7), ("new", 0.7, 1.0), ("world", 1.0, 1.4)],
        )
    ]


def test_a_unit_the_text_lacks_is_dropped_and_matching_resumes() -> None:
    text = "one two three"
    units = [U("one", 0, 1), U("zzz", 1, 2), U("two", 2, 3), U("three", 3, 4)]
    assert group_sentences(text, units) == [
        seg("one two three", [("one", 0, 1), ("two", 2, 3), ("three", 3, 4)])
    ]


def test_case_and_width_differences_still_match() -> None:
    assert group_sentences("ＡＢＣ abc", [U("abc", 0, 1), U("ABC", 1, 2)]) == [
        seg("ＡＢＣ abc", [("ＡＢＣ", 0, 1), ("abc", 1, 2)])
    ]


def test_text_is_never_lost() -> None:
    # Leading and stray punctuation joins a neighbouring sentence; words
    # after the last unit get the last known time.
    text = "... Hello. !! Bye now"
    units = [U("Hello", 0.0, 0.4), U("Bye", 1.0, 1.2)]
    assert group_sentences(text, units) == [
        seg("... Hello. !!", [("Hello", 0.0, 0.4)]),
        seg("Bye now", [("Bye", 1.0, 1.2), ("now", 1.2, 1.2)]),
    ]
    assert group_sentences("!!", []) == [Segment("!!", 0.0, 0.0, [])]
    assert group_sentences("   ", []) == []


def test_every_word_appears_once_in_order() -> None:
    text = "Alpha beta, gamma! Delta epsilon. 中文字。Zeta"
    units = [
        U(w, i, i + 1) for i, w in enumerate(["Alpha", "beta", "gamma", "Delta", "中", "文", "字", "Zeta"])
    ]
    segments = group_sentences(text, units)
    words = [w.text for s in segments for w in s.words]
    assert words == ["Alpha", "beta", "gamma", "Delta", "epsilon", "中", "文", "字", "Zeta"]
    assert "".join(s.text for s in segments).replace(" ", "") == text.replace(" ", "")
    times = [t for s in segments for w in s.words for t in (w.start, w.end)]
    assert times == sorted(times)


# --------------------------------------------------------------------------- #
# Times, fallback
# --------------------------------------------------------------------------- #


def test_times_clamped_to_the_chunk_and_monotonic() -> None:
    raw = [U("a", -1.0, 0.5), U("b", 0.4, 0.3), U("c", 377.2, 377.2), U("d", 2.0, 2.5)]
    assert tidy_times(raw, duration=3.0) == [
        U("a", 0.0, 0.5),
        U("b", 0.5, 0.5),
        U("c", 3.0, 3.0),
        U("d", 3.0, 3.0),
    ]


def test_chunk_segments_clamp_before_grouping() -> None:
    segments = chunk_segments(
        "one. two.", [U("one", 0.5, 400.0), U("two", 400.0, 500.0)], 8.0, fallback=False
    )
    assert segments == [seg("one.", [("one", 0.5, 8.0)]), seg("two.", [("two", 8.0, 8.0)])]


def test_coverage_fallback_keeps_good_segments() -> None:
    text = "Hello there. How are you?"
    units = [U("Hello", 0, 1), U("there", 1, 2), U("How", 3, 4), U("are", 4, 5), U("you", 5, 6)]
    grouped = group_sentences(text, units)
    assert len(grouped) == 2
    assert coverage_fallback(text, units, grouped) == grouped
    assert chunk_segments(text, units, 10.0, fallback=True) == grouped


def test_coverage_fallback_replaces_thin_segments_with_the_whole_chunk() -> None:
    text = "Hello there. How are you?"
    units = [U("Hello", 0, 1), U("there", 1, 2)]
    thin = [seg("Hello there.", [("Hello", 0, 1), ("there", 1, 2)])]  # 11 of 21 visible chars
    assert coverage_fallback(text, units, thin) == [Segment(text, 0, 2, units)]
    assert coverage_fallback(text, units, []) == [Segment(text, 0, 2, units)]
    assert coverage_fallback(text, [], []) == [Segment(text, 0.0, 0.0, [])]


# --------------------------------------------------------------------------- #
# Chunk plan and transcript sharing
# --------------------------------------------------------------------------- #

SR = 16_000


def test_pauses_are_the_complement_of_speech() -> None:
    assert pauses([(10, 20), (30, 40)], 50) == [(0, 10), (20, 30), (40, 50)]
    assert pauses([(0, 50)], 50) == []
    assert pauses([], 50) == [(0, 50)]


def test_cut_goes_in_the_longest_pause_not_at_the_limit() -> None:
    samples = np.ones(10 * SR, np.float32)

    def speech(_: np.ndarray) -> list[tuple[int, int]]:  # window-relative
        return [(0, SR), (int(1.2 * SR), 3 * SR), (int(3.8 * SR), 4 * SR)]

    # Window [6 s, 10 s): pauses 1.0-1.2 s and 3.0-3.8 s -> middle of the longer.
    assert choose_cut(samples, 6 * SR, 10 * SR, speech) == 6 * SR + int(3.4 * SR)


def test_cut_falls_back_to_the_quietest_frame_without_a_pause() -> None:
    samples = np.ones(10 * SR, np.float32)
    samples[int(7.5 * SR) : int(7.5 * SR) + 320] = 0.0
    cut = choose_cut(samples, 6 * SR, 10 * SR, lambda w: [(0, len(w))])
    assert int(7.5 * SR) <= cut < int(7.5 * SR) + 320


def test_plan_chunks_covers_everything_within_the_limit() -> None:
    samples = np.zeros(25 * SR, np.float32)
    # All silence: each cut in the middle of the 3.5 s window before the limit.
    spans = plan_chunks(samples, 7, lambda w: [])
    assert spans == [(0, 84000), (84000, 168000), (168000, 252000), (252000, 336000), (336000, 400000)]
    assert plan_chunks(samples[: 7 * SR], 7, lambda w: []) == [(0, 7 * SR)]


def test_split_text_cuts_between_words_and_joins_back() -> None:
    latin = "one two three four five six"
    pieces = split_text(latin, [1, 1, 1])
    assert pieces == ["one two", "three four", "five six"]
    assert join_texts(pieces) == latin
    cjk = "大家好，今天我们来学习。"
    pieces = split_text(cjk, [1, 1])
    assert pieces == ["大家好，今天", "我们来学习。"] and join_texts(pieces) == cjk
    assert split_text("word", [1, 1]) == ["", "word"]
    assert split_text(" single ", [3]) == ["single"]


# --------------------------------------------------------------------------- #
# Languages
# --------------------------------------------------------------------------- #


def test_aligner_language() -> None:
    assert aligner_language("zh-CN") == "Chinese" and aligner_language("ja") == "Japanese"
    assert aligner_language(None) is None and aligner_language("auto") is None
    with pytest.raises(AlignValueError, match=r"'Arabic' is not supported.*Cantonese, Chinese, English"):
        aligner_language("ar")


def test_language_for_script() -> None:
    assert language_for_script("今日はいい天気") == "Japanese"
    assert language_for_script("안녕하세요") == "Korean"
    assert language_for_script("大家好 hello") == "Chinese"
    assert language_for_script("hello") == "English"


# --------------------------------------------------------------------------- #
# Manifest rules
# --------------------------------------------------------------------------- #


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    inside = root / "a.wav"
    secret = outside / "secret.wav"
    inside.write_bytes(b"x")
    secret.write_bytes(b"x")
    (root / "link.wav").symlink_to(secret)
    return {"root": root, "inside": inside, "secret": secret, "link": root / "link.wav"}


def entry(path: object, **extra: object) -> dict[str, object]:
    return {"path": str(path) if isinstance(path, Path) else path, **extra}


def test_manifest_shape_errors() -> None:
    for raw in (None, [], {}, "x"):
        with pytest.raises(ManifestError, match="manifest must be a non-empty array"):
            check_manifest(raw, None, loopback=True)
    with pytest.raises(ManifestError, match="manifest entry 1 missing 'path'"):
        check_manifest([entry("/a"), {"offset": 1}], None, loopback=True)
    with pytest.raises(ManifestError, match="manifest entry 0 missing 'path'"):
        check_manifest(["/a.wav"], None, loopback=True)
    for bad in ("12", None, True, float("nan"), [1]):
        with pytest.raises(AlignValueError, match="'offset' must be a number"):
            check_manifest([entry("/a", offset=bad, id="e")], None, loopback=True)
    with pytest.raises(AlignValueError, match="must not be negative"):
        check_manifest([entry("/a", offset=-1)], None, loopback=True)
    with pytest.raises(AlignValueError, match="'path' must be a string"):
        check_manifest([entry(5)], None, loopback=True)


def test_manifest_entries_resolved_with_ids_offsets_and_texts(files: dict[str, Path]) -> None:
    raw = [
        entry(files["inside"], id="el_1", offset=1.5, text=" hi "),
        entry(files["root"] / ".." / "root" / "a.wav"),
    ]
    first, second = check_manifest(raw, None, loopback=True)
    assert (first.name, first.offset, first.text, first.path) == ("el_1", 1.5, "hi", files["inside"])
    assert (second.name, second.offset, second.text, second.path) == ("1", 0.0, None, files["inside"])
    assert first.label == f"manifest entry el_1 ({files['inside']})"


def test_missing_and_relative_paths_are_400(files: dict[str, Path]) -> None:
    with pytest.raises(ManifestError, match=r"manifest entry e2 path not found: /nope/x\.wav"):
        check_manifest([entry(files["inside"]), entry("/nope/x.wav", id="e2")], None, loopback=True)
    with pytest.raises(ManifestError, match="must be absolute"):
        check_manifest([entry("a.wav")], None, loopback=True)


def test_remote_clients_need_configured_roots(files: dict[str, Path]) -> None:
    # Same answer for a file that exists and one that does not: no oracle.
    for path in (files["inside"], "/nope/x.wav"):
        with pytest.raises(ManifestForbidden, match="only from loopback"):
            check_manifest([entry(path)], None, loopback=False)
    roots = (files["root"],)
    assert check_manifest([entry(files["inside"])], roots, loopback=False)[0].path == files["inside"]


def test_roots_confine_every_client_even_through_symlinks_and_dotdot(files: dict[str, Path]) -> None:
    roots = (files["root"],)
    escapes = [files["secret"], files["link"], files["root"] / ".." / "outside" / "secret.wav", "/nope/x.wav"]
    for path in escapes:
        for loopback in (True, False):
            with pytest.raises(ManifestForbidden, match="outside POLYASR_MANIFEST_ROOTS"):
                check_manifest([entry(path)], roots, loopback=loopback)
    with pytest.raises(ManifestForbidden):
        check_manifest([entry(files["inside"])], (), loopback=True)  # set but empty: nothing


def test_permission_is_checked_for_all_entries_before_existence(files: dict[str, Path]) -> None:
    with pytest.raises(ManifestForbidden):
        check_manifest([entry(files["root"] / "missing.wav"), entry(files["secret"])], (files["root"],), True)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("192.168.1.5", False),
        ("::ffff:10.0.0.1", False),
        ("testclient", False),
        ("localhost", False),
        (None, False),
        ("", False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_manifest_roots_setting(tmp_path: Path) -> None:
    assert load_settings("cuda", {}).manifest_root_paths is None
    assert load_settings("cuda", {"POLYASR_MANIFEST_ROOTS": ""}).manifest_root_paths == ()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "b")
    value = f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'link'} , {tmp_path / 'c'}"
    roots = load_settings("mlx", {"ASR_MANIFEST_ROOTS": value}).manifest_root_paths
    assert roots == (tmp_path.resolve() / "a", tmp_path.resolve() / "b", tmp_path.resolve() / "c")
    with pytest.raises(ConfigError, match=r"POLYASR_MANIFEST_ROOTS.*not an absolute path"):
        load_settings("cuda", {"POLYASR_MANIFEST_ROOTS": "data/audio"})
