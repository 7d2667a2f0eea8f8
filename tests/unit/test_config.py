"""Settings: the POLYASR_/ASR_ lookup rule, flags, backend defaults, errors."""

from __future__ import annotations

import pytest

from polyasr.core.config import ConfigError, load_settings


def test_backend_defaults() -> None:
    mlx = load_settings("mlx", {})
    cuda = load_settings("cuda", {})
    assert (mlx.port, mlx.model) == (8765, "Qwen/Qwen3-ASR-0.6B")
    assert (cuda.port, cuda.model) == (8766, "Qwen/Qwen3-ASR-1.7B")
    assert cuda.aligner_model == "Qwen/Qwen3-ForcedAligner-0.6B"
    assert mlx.aligner_model == "mlx-community/Qwen3-ForcedAligner-0.6B-4bit"
    assert cuda.idle_evict_seconds == 180 and cuda.coload is True
    assert cuda.device == "cuda:0" and cuda.dtype == "bfloat16"


def test_legacy_asr_fallback_and_polyasr_precedence() -> None:
    assert load_settings("cuda", {"ASR_PORT": "9000"}).port == 9000
    assert load_settings("cuda", {"ASR_PORT": "9000", "POLYASR_PORT": "9001"}).port == 9001
    assert load_settings("mlx", {"ASR_ALIGN_ALIGNER_MODEL": "x/y"}).aligner_model == "x/y"


def test_explicit_empty_polyasr_counts_as_set() -> None:
    # An empty POLYASR_LOG_DIR disables logging even when ASR_LOG_DIR is set.
    settings = load_settings("cuda", {"POLYASR_LOG_DIR": "", "ASR_LOG_DIR": "/var/log/x"})
    assert settings.log_dir == ""
    assert settings.log_root(__import__("pathlib").Path("/repo")) is None
    assert load_settings("cuda", {"ASR_LOG_DIR": ""}).log_dir == ""


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "OFF", "False", ""])
def test_flags_false(value: str) -> None:
    assert load_settings("cuda", {"POLYASR_COLOAD": value}).coload is False


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE"])
def test_flags_true(value: str) -> None:
    assert load_settings("cuda", {"POLYASR_COLOAD": value}).coload is True


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"POLYASR_PORT": "eighty"}, "POLYASR_PORT"),
        ({"ASR_IDLE_EVICT_SECONDS": "-5"}, "ASR_IDLE_EVICT_SECONDS"),
        ({"POLYASR_COLOAD": "maybe"}, "POLYASR_COLOAD"),
        ({"POLYASR_DTYPE": "int3"}, "POLYASR_DTYPE"),
        ({"POLYASR_BACKEND": "onnx"}, "POLYASR_BACKEND"),
        ({"POLYASR_MAX_UPLOAD_MB": "0"}, "POLYASR_MAX_UPLOAD_MB"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings("cuda", env)


def test_relative_log_dir_is_under_the_server_directory(tmp_path) -> None:
    settings = load_settings("cuda", {"POLYASR_LOG_DIR": "logs"})
    assert settings.log_root(tmp_path) == tmp_path / "logs"


def test_token_budget_is_proportional_and_clamped() -> None:
    settings = load_settings("mlx", {})
    assert settings.token_budget(0.1) == 32
    assert settings.token_budget(4.0) == 101
    assert settings.token_budget(600.0) == 256


def test_views_take_each_knob_from_its_setting() -> None:
    from types import SimpleNamespace

    from polyasr.api.services import dictation_settings
    from polyasr.live.basr.wire import WsLimits

    env = {
        "POLYASR_WS_MAX_FRAME_BYTES": "4096",
        "POLYASR_MAX_SESSION_SEC": "60",
        "POLYASR_PARTIAL_WINDOW_SEC": "7",
        "POLYASR_STREAM_CHUNK_SEC": "1.5",
        "POLYASR_NATIVE_STREAMING": "1",
    }
    settings = load_settings("cuda", env)
    limits = WsLimits.from_settings(settings)
    assert (limits.max_frame_bytes, limits.max_session_sec) == (4096, 60.0)
    assert limits.max_text_bytes == settings.ws_max_text_bytes
    knobs = dictation_settings(settings, SimpleNamespace(supports_native_streaming=False))  # type: ignore[arg-type]
    assert (knobs.partial_window_sec, knobs.stream_chunk_sec) == (7.0, 1.5)
    assert knobs.partials_enabled is True  # the CUDA default
    assert knobs.native is False  # asked for, but this engine cannot stream natively


def test_an_alignment_is_capped_by_the_lower_limit_and_fits_the_decoded_audio_budget() -> None:
    assert load_settings("cuda", {}).align_cap == (3600.0, "POLYASR_MAX_ALIGN_SEC")
    lower = load_settings("cuda", {"POLYASR_MAX_AUDIO_SEC": "20"})
    assert lower.align_cap == (20.0, "POLYASR_MAX_AUDIO_SEC")
    with pytest.raises(ConfigError, match="POLYASR_DECODED_AUDIO_MB=100 cannot hold one alignment"):
        load_settings("cuda", {"POLYASR_DECODED_AUDIO_MB": "100"})  # an hour is 220 MiB
