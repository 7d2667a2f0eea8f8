"""A model value that looks like a path is checked as a path before anything
else, and the reason names what is wrong and which variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyasr.core.weights import cannot_load, check_weights

HINT = "set POLYASR_MODEL to the folder that holds the model's config.json"


@pytest.mark.parametrize(
    "value", ["/nonexistent/Qwen3-ASR-typo", "./models/typo", "../typo", "~/no-such-model"]
)
def test_a_path_that_is_not_there(value: str) -> None:
    assert cannot_load(value, "POLYASR_MODEL") == f"{value} does not exist; {HINT}"


def test_a_folder_without_the_model(tmp_path: Path) -> None:
    (tmp_path / "Qwen3-ASR-1.7B").mkdir()  # the parent of a checkpoint, not the checkpoint
    assert cannot_load(str(tmp_path), "POLYASR_MODEL") == f"{tmp_path} has no config.json; {HINT}"


def test_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    reason = cannot_load(str(weights), "POLYASR_ALIGNER_MODEL")
    assert reason == f"{weights} is not a folder; {HINT.replace('POLYASR_MODEL', 'POLYASR_ALIGNER_MODEL')}"


def test_a_checkpoint_folder_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "asr").mkdir()
    (tmp_path / "asr" / "config.json").write_text("{}")
    assert cannot_load(str(tmp_path / "asr"), "POLYASR_MODEL") is None
    monkeypatch.chdir(tmp_path)  # an existing relative folder is a path too, without "./"
    assert cannot_load("asr", "POLYASR_MODEL") is None
    assert check_weights("asr") == (True, "asr")
