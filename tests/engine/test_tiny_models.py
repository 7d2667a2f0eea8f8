"""Tests for the tiny Qwen3-ASR / ForcedAligner checkpoint builder.

The file checks run in both virtual environments.  The checks against the real
model classes run where those libraries are installed (qwen-asr in the CUDA
environment, mlx-qwen3-asr in the MLX one) and are skipped elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from tests.fixtures.tiny_models import (
    BUILD_MARKER,
    FULL_0_6B,
    FULL_1_7B,
    SPECIAL_TOKENS,
    SUPPORTED_LANGUAGES,
    TINY,
    ArchSpec,
    TinyModels,
    build_tiny_models,
    expected_parameter_shapes,
    model_config,
)

CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "chat_template.json",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def test_all_checkpoint_files_exist(models: TinyModels) -> None:
    for directory in (models.asr, models.aligner):
        for name in CHECKPOINT_FILES:
            assert (directory / name).is_file(), directory / name
    assert (models.asr.parent / BUILD_MARKER).is_file()


def test_asr_config(models: TinyModels) -> None:
    config = _config(models.asr)
    thinker = config["thinker_config"]
    text = thinker["text_config"]
    assert config["model_type"] == "qwen3_asr"
    assert config["support_languages"] == list(SUPPORTED_LANGUAGES)
    assert thinker["model_type"] == "qwen3_asr_thinker"
    assert thinker["audio_token_id"] == 151676
    assert thinker["audio_start_token_id"] == 151669
    assert thinker["audio_end_token_id"] == 151670
    assert text["vocab_size"] == 151936
    assert (text["num_hidden_layers"], text["hidden_size"], text["head_dim"]) == (2, 32, 8)
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (4, 2)
    assert sum(text["rope_scaling"]["mrope_section"]) == text["head_dim"] // 2
    assert text["tie_word_embeddings"] is True
    assert thinker["audio_config"]["num_mel_bins"] == 128
    assert thinker["audio_config"]["output_dim"] == text["hidden_size"]


def test_aligner_config(models: TinyModels) -> None:
    config = _config(models.aligner)
    thinker = config["thinker_config"]
    assert config["model_type"] == "qwen3_asr"
    assert thinker["model_type"] == "qwen3_forced_aligner"
    assert thinker["classify_num"] == 5000
    assert config["timestamp_token_id"] == 151705
    assert config["timestamp_segment_time"] == 80
    assert thinker["text_config"]["tie_word_embeddings"] is False
    assert thinker["tie_word_embeddings"] is False
    assert config["tie_word_embeddings"] is False


def test_feature_extractor_and_generation_config(models: TinyModels) -> None:
    pre = json.loads((models.asr / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert pre["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert (pre["feature_size"], pre["hop_length"], pre["n_fft"]) == (128, 160, 400)
    assert (pre["sampling_rate"], pre["chunk_length"]) == (16000, 30)
    gen = json.loads((models.asr / "generation_config.json").read_text(encoding="utf-8"))
    assert gen["eos_token_id"] == [151645, 151643]


@pytest.mark.parametrize("which", ["asr", "aligner"])
def test_weights_match_architecture(models: TinyModels, which: str) -> None:
    aligner = which == "aligner"
    expected = expected_parameter_shapes(TINY, aligner)
    with safe_open(str(getattr(models, which) / "model.safetensors"), "pt") as f:
        names = f.keys()
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
        dtypes = {f.get_slice(name).get_dtype() for name in names}
    assert shapes == expected
    assert dtypes == {"BF16"}
    assert ("thinker.lm_head.weight" in shapes) is aligner


def test_tokenizer_special_tokens_at_real_ids(models: TinyModels) -> None:
    tok_config = json.loads((models.asr / "tokenizer_config.json").read_text(encoding="utf-8"))
    decoder = tok_config["added_tokens_decoder"]
    for token, (token_id, special) in SPECIAL_TOKENS.items():
        assert decoder[str(token_id)]["content"] == token
        assert decoder[str(token_id)]["special"] is special
    assert tok_config["extra_special_tokens"]["audio_token"] == "<|audio_pad|>"
    vocab = json.loads((models.asr / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(151643))

    tokenizer = Tokenizer.from_file(str(models.asr / "tokenizer.json"))
    ids = tokenizer.encode("<|im_start|>assistant\nlanguage English<asr_text>hello world").ids
    assert ids[0] == 151644 and 151704 in ids
    # <asr_text> is not special: output parsers need it after skipping specials.
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "assistant\nlanguage English<asr_text>hello world"


def test_build_is_idempotent_and_deterministic(models: TinyModels, tmp_path: Path) -> None:
    before = (models.asr / "model.safetensors").stat().st_mtime_ns
    again = build_tiny_models(models.asr.parent)
    assert again == models
    assert (models.asr / "model.safetensors").stat().st_mtime_ns == before

    fresh = build_tiny_models(tmp_path)
    for which in ("asr", "aligner"):
        for name in CHECKPOINT_FILES:
            a = (getattr(models, which) / name).read_bytes()
            b = (getattr(fresh, which) / name).read_bytes()
            assert a == b, f"{which}/{name} differs between builds"


def test_mrope_section_is_validated() -> None:
    with pytest.raises(ValueError):
        ArchSpec(head_dim=8, mrope_section=(2, 2, 2))


# --- checks against the real implementations (skipped where not installed) ---


@pytest.mark.parametrize(
    ("spec", "params"),
    [(TINY, 4_905_184), (FULL_0_6B, 782_426_112), (FULL_1_7B, 2_038_052_480)],
    ids=["tiny", "0.6b", "1.7b"],
)
@pytest.mark.parametrize("aligner", [False, True], ids=["asr", "aligner"])
def test_shapes_match_qwen_asr_classes(spec: ArchSpec, params: int, aligner: bool) -> None:
    """The name/shape templates equal qwen-asr's module tree, full sizes included."""
    pytest.importorskip("qwen_asr")
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
    )

    config = Qwen3ASRConfig.from_dict(model_config(spec, aligner))
    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(config)
    real = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = model.thinker.lm_head.weight is model.thinker.model.embed_tokens.weight
    assert tied is not aligner
    if tied:
        del real["thinker.lm_head.weight"]  # save_pretrained omits the tied copy
    assert real == expected_parameter_shapes(spec, aligner)
    if not aligner:
        assert sum(p.numel() for p in model.parameters()) == params


def test_qwen_asr_loads_without_key_warnings(models: TinyModels) -> None:
    pytest.importorskip("qwen_asr")
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration

    for directory, head_rows in ((models.asr, 151936), (models.aligner, 5000)):
        model, info = Qwen3ASRForConditionalGeneration.from_pretrained(
            str(directory), output_loading_info=True
        )
        assert info["missing_keys"] == [] and info["unexpected_keys"] == []
        assert info["mismatched_keys"] == []
        assert model.thinker.lm_head.weight.shape[0] == head_rows


def test_mlx_qwen3_asr_loads_strictly(models: TinyModels) -> None:
    pytest.importorskip("mlx_qwen3_asr")
    from mlx_qwen3_asr import load_model

    # load_model uses mlx's strict load_weights: any name/shape mismatch raises.
    _, asr_config = load_model(str(models.asr))
    _, aligner_config = load_model(str(models.aligner))
    assert asr_config.classify_num is None
    assert aligner_config.classify_num == 5000
    assert aligner_config.timestamp_token_id == 151705
