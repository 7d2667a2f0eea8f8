"""Settings from the environment, validated once at start-up.

Each setting ``NAME`` is read from ``POLYASR_NAME``, falling back to the
legacy ``ASR_NAME``. An explicitly set empty ``POLYASR_*`` counts as set
(so ``POLYASR_LOG_DIR=`` disables logging), and flags are false for
``0/false/no/off`` (and empty). Values that do not parse stop start-up with a
message naming the variable, instead of surfacing later as odd behaviour.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from polyasr.core.constants import SAMPLE_RATE

Backend = Literal["mlx", "cuda"]


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from ``POLYASR_<name>``, else ``ASR_<name>``."""
    return Field(json_schema_extra={"env": [name]}, **kwargs)


# Settings whose default depends on the backend; applied when the environment
# does not set them.
BACKEND_DEFAULTS: dict[Backend, dict[str, Any]] = {
    "mlx": {
        "model": "Qwen/Qwen3-ASR-0.6B",
        "port": 8765,
        "aligner_model": "mlx-community/Qwen3-ForcedAligner-0.6B-4bit",
        "dtype": "float16",
        "device": "default",  # MLX's own: the GPU on Apple Silicon, the CPU on Linux
        "partials_enabled": False,
    },
    "cuda": {
        "model": "Qwen/Qwen3-ASR-1.7B",
        "port": 8766,
        "aligner_model": "Qwen/Qwen3-ForcedAligner-0.6B",
        "partials_enabled": True,
    },
}


# Where the ``POLYASR_FAULTS`` test hook can make an engine call raise (a
# decode at one scheduler priority, or a native-stream step) or, at a
# ``stall:`` site, run past the decode deadline (polyasr.models.transcriber).
FAULT_SITES: tuple[str, ...] = (
    "decode:final",
    "decode:batch",
    "decode:commit",
    "decode:partial",
    "decode:probe",
    "native:open",
    "native:feed",
    "native:finish",
    "stall:final",
    "stall:batch",
    "stall:commit",
    "stall:partial",
)


def _fault_counts(value: str | None) -> dict[str, int]:
    """``"decode:commit:2,native:feed:1"`` as ``{site: count}``; raises ValueError."""
    counts: dict[str, int] = {}
    for entry in (part.strip() for part in (value or "").split(",")):
        if not entry:
            continue
        site, _, count = entry.rpartition(":")
        if site not in FAULT_SITES or not count.isdigit():
            raise ValueError(f"{entry!r} is not <site>:<count> with a site among {', '.join(FAULT_SITES)}")
        counts[site] = counts.get(site, 0) + int(count)
    return counts


def _split_paths(value: str) -> list[str]:
    """A list of paths separated by ``os.pathsep`` or commas; blanks dropped."""
    return [part.strip() for part in re.split(f"[,{re.escape(os.pathsep)}]", value) if part.strip()]


class ConfigError(RuntimeError):
    """An environment variable has a value the server cannot use."""


class Settings(BaseModel):
    """Every tunable of the service; see the README's configuration table."""

    model_config = ConfigDict(validate_assignment=True)

    backend: Backend = "cuda"
    model: str = _env("MODEL", default="")
    # CUDA's name first, then the MLX name of the same setting.
    aligner_model: str = Field(
        default="", json_schema_extra={"env": ["ALIGNER_MODEL", "ALIGN_ALIGNER_MODEL"]}
    )
    host: str = _env("HOST", default="0.0.0.0")
    port: int = _env("PORT", default=0, ge=0, le=65535)
    log_dir: str = _env("LOG_DIR", default="logs")

    idle_evict_seconds: float = _env("IDLE_EVICT_SECONDS", default=180.0, ge=0)
    coload: bool = _env("COLOAD", default=True)
    load_timeout_sec: float = _env("LOAD_TIMEOUT_SEC", default=300.0, gt=0)
    max_upload_mb: float = _env("MAX_UPLOAD_MB", default=25.0, gt=0)
    # Decoded duration of one upload (or manifest entry): compressed silence
    # decodes to hours of float32, so bytes alone do not bound memory.
    max_audio_sec: float = _env("MAX_AUDIO_SEC", default=10_800.0, gt=0)
    # Alignment holds the whole decoded audio (a given transcript is shared out
    # over every chunk by duration): its own, lower cap, for an upload or a
    # manifest's entries together; and a given transcript in proportion to it.
    max_align_sec: float = _env("MAX_ALIGN_SEC", default=3_600.0, gt=0)
    max_align_text_chars_per_sec: float = _env("MAX_ALIGN_TEXT_CHARS_PER_SEC", default=50.0, gt=0)
    # Decoded audio all requests together may hold, and how long one waits for room.
    decoded_audio_mb: float = _env("DECODED_AUDIO_MB", default=1_024.0, gt=0)
    decode_wait_sec: float = _env("DECODE_WAIT_SEC", default=10.0, ge=0)
    # Directories /v1/align/manifest may read; unset = loopback clients only.
    manifest_roots: str | None = _env("MANIFEST_ROOTS", default=None)
    max_manifest_entries: int = _env("MAX_MANIFEST_ENTRIES", default=1_000, ge=1)

    max_new_tokens: int = _env("MAX_NEW_TOKENS", default=256, ge=1)
    min_new_tokens: int = _env("MIN_NEW_TOKENS", default=32, ge=1)
    tokens_per_audio_sec: float = _env("TOKENS_PER_AUDIO_SEC", default=25.0, gt=0)

    keepwarm_interval_sec: float = _env("KEEPWARM_INTERVAL_SEC", default=45.0, ge=0)
    streaming_probe: bool = _env("STREAMING_PROBE", default=True)
    probe_fail_reload: int = _env("PROBE_FAIL_RELOAD", default=3, ge=0)
    probe_fail_exit: int = _env("PROBE_FAIL_EXIT", default=6, ge=0)
    probe_stale_after_sec: float = _env("PROBE_STALE_AFTER_SEC", default=0.0, ge=0)
    weights_check_interval_sec: float = _env("WEIGHTS_CHECK_INTERVAL_SEC", default=60.0, ge=0)

    partials_enabled: bool = _env("PARTIALS_ENABLED", default=False)
    partial_interval_sec: float = _env("PARTIAL_INTERVAL_SEC", default=0.6, ge=0)
    partial_min_delta_sec: float = _env("PARTIAL_MIN_DELTA_SEC", default=0.5, ge=0)
    partial_window_sec: float = _env("PARTIAL_WINDOW_SEC", default=20.0, gt=0)
    final_wait_partial: bool = _env("FINAL_WAIT_PARTIAL", default=False)
    stable_commit_min_sec: float = _env("STABLE_COMMIT_MIN_SEC", default=8.0, gt=0)
    native_streaming: bool = _env("NATIVE_STREAMING", default=False)
    stream_chunk_sec: float = _env("STREAM_CHUNK_SEC", default=2.0, gt=0)
    stream_max_context_sec: float = _env("STREAM_MAX_CONTEXT_SEC", default=30.0, gt=0)
    stream_finalization_mode: Literal["latency", "accuracy"] = _env(
        "STREAM_FINALIZATION_MODE", default="latency"
    )
    resume_ttl_sec: float = _env("RESUME_TTL_SEC", default=300.0, gt=0)
    stop_result_ttl_sec: float = _env("STOP_RESULT_TTL_SEC", default=300.0, gt=0)
    stop_store_max: int = _env("STOP_STORE_MAX", default=10_000, ge=1)

    # What one client can grow (issue: hardening); each has its own refusal.
    max_sessions: int = _env("MAX_SESSIONS", default=64, ge=1)
    # Sessions kept for a resume after their connection went away, and their audio.
    max_held_sessions: int = _env("MAX_HELD_SESSIONS", default=128, ge=1)
    max_held_mb: float = _env("MAX_HELD_MB", default=512.0, gt=0)
    # Open TCP connections (HTTP and WebSocket) and running requests; 0 = sized
    # from MAX_SESSIONS (see ``connection_limit``). Beyond it: 503 server_busy.
    max_connections: int = _env("MAX_CONNECTIONS", default=0, ge=0)
    header_timeout_sec: float = _env("HEADER_TIMEOUT_SEC", default=10.0, gt=0)
    body_timeout_sec: float = _env("BODY_TIMEOUT_SEC", default=120.0, gt=0)
    max_session_sec: float = _env("MAX_SESSION_SEC", default=7_200.0, gt=0)
    session_idle_sec: float = _env("SESSION_IDLE_SEC", default=30.0, gt=0)
    start_timeout_sec: float = _env("START_TIMEOUT_SEC", default=30.0, gt=0)
    reorder_window: int = _env("REORDER_WINDOW", default=256, ge=1)
    reorder_max_bytes: int = _env("REORDER_MAX_BYTES", default=2_097_152, ge=0)
    # Messages that are not progress, per connection: duplicate frames, Realtime errors.
    max_duplicate_frames: int = _env("MAX_DUPLICATE_FRAMES", default=1_000, ge=1)
    max_client_errors: int = _env("MAX_CLIENT_ERRORS", default=100, ge=1)
    ws_max_text_bytes: int = _env("WS_MAX_TEXT_BYTES", default=65_536, ge=256)
    ws_max_frame_bytes: int = _env("WS_MAX_FRAME_BYTES", default=262_144, ge=1_024)
    max_id_chars: int = _env("MAX_ID_CHARS", default=128, ge=1)
    max_context_chars: int = _env("MAX_CONTEXT_CHARS", default=4_096, ge=0)
    max_queued_decodes: int = _env("MAX_QUEUED_DECODES", default=256, ge=1)
    # How long a unit's worker waits for more of the same work to fill a batch
    # when others are already queued (never for a final that is alone).
    batch_window_ms: float = _env("BATCH_WINDOW_MS", default=10.0, ge=0, le=1000)
    decode_timeout_sec: float = _env("DECODE_TIMEOUT_SEC", default=300.0, gt=0)
    # Threads for batch work (upload decoding, alignment planning, FLAC); 0 = half the cores.
    batch_threads: int = _env("BATCH_THREADS", default=0, ge=0)
    shutdown_grace_sec: float = _env("SHUTDOWN_GRACE_SEC", default=10.0, ge=0)

    # Live rot detection.
    live_rot_detect: bool = _env("LIVE_ROT_DETECT", default=True)
    live_min_speech_sec: float = _env("LIVE_MIN_SPEECH_SEC", default=2.0, ge=0)
    live_reload_witnesses: int = _env("LIVE_RELOAD_WITNESSES", default=2, ge=1)
    live_reload_interval_sec: float = _env("LIVE_RELOAD_INTERVAL_SEC", default=600.0, ge=0)

    # Who may talk to the service.
    api_key: str | None = _env("API_KEY", default=None)
    health_public: bool = _env("HEALTH_PUBLIC", default=True)
    allowed_origins: str | None = _env("ALLOWED_ORIGINS", default=None)
    allowed_hosts: str | None = _env("ALLOWED_HOSTS", default=None)

    # Archive retention (both archives), oldest first.
    log_retention_days: float = _env("LOG_RETENTION_DAYS", default=30.0, ge=0)
    log_max_gb: float = _env("LOG_MAX_GB", default=20.0, ge=0)
    log_min_free_gb: float = _env("LOG_MIN_FREE_GB", default=1.0, ge=0)

    device: str = _env("DEVICE", default="cuda:0")
    dtype: Literal["bfloat16", "float16", "float32"] = _env("DTYPE", default="bfloat16")
    engine_backend: Literal["transformers", "vllm"] = _env("BACKEND", default="transformers")
    # CUDA decode path: our static-cache loop ("fast") or transformers' generate;
    # None = fast on a CUDA device, generate on the CPU.
    decode: Literal["fast", "generate"] | None = _env("DECODE", default=None)
    compile: bool = _env("COMPILE", default=False)
    # The fast loop's static KV cache, held while the model is loaded: clips
    # per decode (the scheduler batches up to this) and positions per clip
    # (prompt plus answer).
    decode_rows: int = _env("DECODE_ROWS", default=32, ge=1, le=256)
    decode_span: int = _env("DECODE_SPAN", default=1280, ge=128)
    # The repetition-loop guard (polyasr.core.loops): a looping tail is cut
    # and the piece decoded once more with the loop banned. Off only to
    # compare against the unguarded decode.
    loop_guard: bool = _env("LOOP_GUARD", default=True)

    # Test hook (so every fault can be driven through a real server): the next
    # <count> engine calls at each listed site raise. Unset = off; never in production.
    faults: str | None = _env("FAULTS", default=None)

    @field_validator(
        "coload",
        "streaming_probe",
        "partials_enabled",
        "final_wait_partial",
        "native_streaming",
        "live_rot_detect",
        "health_public",
        "compile",
        mode="before",
    )
    @classmethod
    def _flag(cls, value: Any) -> Any:
        """Empty means false (an explicitly set empty variable counts as set)."""
        if isinstance(value, str) and value.strip() == "":
            return False
        return value

    @field_validator("manifest_roots")
    @classmethod
    def _absolute_roots(cls, value: str | None) -> str | None:
        """A relative root would depend on the server's working directory."""
        for root in _split_paths(value or ""):
            if not Path(root).expanduser().is_absolute():
                raise ValueError(f"{root!r} is not an absolute path")
        return value

    @field_validator("dtype", "engine_backend", "stream_finalization_mode", "decode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_key", "allowed_origins", "allowed_hosts", "faults", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """An empty key or list means the same as none given."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("faults")
    @classmethod
    def _fault_sites(cls, value: str | None) -> str | None:
        _fault_counts(value)
        return value

    @property
    def fault_counts(self) -> dict[str, int]:
        """The ``POLYASR_FAULTS`` test hook as ``{site: engine calls left to fail}``."""
        return _fault_counts(self.faults)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def align_cap(self) -> tuple[float, str]:
        """The decoded seconds one alignment may hold, and the setting that sets them."""
        if self.max_align_sec < self.max_audio_sec:
            return self.max_align_sec, "POLYASR_MAX_ALIGN_SEC"
        return self.max_audio_sec, "POLYASR_MAX_AUDIO_SEC"

    @property
    def decoded_audio_bytes(self) -> int:
        return int(self.decoded_audio_mb * 1_048_576)

    @property
    def connection_limit(self) -> int:
        """``MAX_CONNECTIONS``, else every live session twice (a resume overlaps
        the socket it replaces) plus room for HTTP clients."""
        return self.max_connections or 2 * self.max_sessions + 64

    @property
    def manifest_root_paths(self) -> tuple[Path, ...] | None:
        """Resolved directories manifest paths must lie under.

        ``None`` when the variable is unset (then loopback clients may read
        any absolute path); an explicitly empty value means no directory.
        """
        if self.manifest_roots is None:
            return None
        return tuple(Path(root).expanduser().resolve() for root in _split_paths(self.manifest_roots))

    @property
    def probe_stale_window_sec(self) -> float | None:
        """Freshness window of the streaming probe; ``None`` = never stale."""
        if self.probe_stale_after_sec > 0:
            return self.probe_stale_after_sec
        if self.keepwarm_interval_sec > 0:
            return 4 * self.keepwarm_interval_sec
        return None

    def log_root(self, base_dir: Path) -> Path | None:
        """The archive root, relative paths taken from ``base_dir``; ``None`` = off."""
        if not self.log_dir.strip():
            return None
        path = Path(self.log_dir).expanduser()
        return path if path.is_absolute() else base_dir / path

    def token_budget(self, seconds: float) -> int:
        """Generated-token cap for a clip: proportional to its length (§3.7)."""
        wanted = int(seconds * self.tokens_per_audio_sec) + 1
        return max(self.min_new_tokens, min(self.max_new_tokens, wanted))


def _lookup(environ: Mapping[str, str], names: list[str]) -> tuple[str, str] | None:
    """The first set variable among ``POLYASR_<n>`` / ``ASR_<n>`` for each name.

    A set ``POLYASR_*`` wins even when empty; ``ASR_*`` is the legacy fallback.
    """
    for name in names:
        for var in (f"POLYASR_{name}", f"ASR_{name}"):
            if var in environ:
                return var, environ[var]
    return None


View = TypeVar("View")


def settings_view(cls: type[View], settings: Settings, /, **given: Any) -> View:
    """The frozen dataclass of knobs one part runs with, each field taken from
    the setting of the same name unless ``given``.

    Parts take such small views rather than the whole ``Settings`` so that a
    test can build one in a line; filling them by name keeps a new knob from
    being wired in the settings and forgotten in the view.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return cls(**{name: given[name] if name in given else getattr(settings, name) for name in names})


def load_settings(backend: Backend, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings for ``backend``; raise :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dict(BACKEND_DEFAULTS[backend], backend=backend)
    source_var: dict[str, str] = {}
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict):
            continue
        found = _lookup(env, list(extra["env"]))  # type: ignore[arg-type]
        if found is not None:
            source_var[field], values[field] = found
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = source_var.get(field, field)
            problems.append(f"{var}={values.get(field)!r}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    if "native_streaming" not in source_var and settings.engine_backend == "vllm":
        settings.native_streaming = True  # vLLM's streaming state is the point of choosing it
    align_sec, align_setting = settings.align_cap
    align_mb = align_sec * SAMPLE_RATE * 4 / 1_048_576
    if settings.decoded_audio_mb < align_mb:
        raise ConfigError(
            f"invalid configuration: POLYASR_DECODED_AUDIO_MB={settings.decoded_audio_mb:g} cannot hold "
            f"one alignment of {align_setting}={align_sec:g} s ({align_mb:.0f} MB)"
        )
    if settings.min_new_tokens > settings.max_new_tokens:
        raise ConfigError(
            "invalid configuration: POLYASR_MIN_NEW_TOKENS must not exceed POLYASR_MAX_NEW_TOKENS"
        )
    if settings.decode_span <= settings.max_new_tokens:
        raise ConfigError(
            "invalid configuration: POLYASR_DECODE_SPAN must exceed POLYASR_MAX_NEW_TOKENS "
            "(it holds the prompt and the answer)"
        )
    return settings
