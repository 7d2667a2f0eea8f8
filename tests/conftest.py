"""Shared fixtures: the backend under test, tiny real checkpoints, apps, servers.

The suite runs once per backend environment (``make test`` runs it in the MLX
venv and in the CUDA venv). Which engine a run exercises follows
``POLYASR_TEST_BACKEND``, else whichever backend library is importable. Every
engine here loads the tiny random-weight checkpoints through the real loaders.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from polyasr.api.app import create_app
from polyasr.core.config import Backend, Settings, load_settings
from tests.fixtures.tiny_models import TinyModels, build_tiny_models

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS: dict[str, Path] = {"mlx": REPO / "server.py", "cuda": REPO / "cuda" / "server.py"}


def _detect_backend() -> Backend:
    chosen = os.environ.get("POLYASR_TEST_BACKEND")
    if chosen in ("mlx", "cuda"):
        return chosen  # type: ignore[return-value]
    if importlib.util.find_spec("qwen_asr") is not None:
        return "cuda"
    return "mlx"


BACKEND: Backend = _detect_backend()


KINDS = ("unit", "engine", "app", "live", "fuzz", "browser", "client")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder's kind, so ``-m`` selects what the folders hold."""
    for item in items:
        kind = Path(str(item.path)).relative_to(REPO / "tests").parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


def engine_class(backend: str) -> Any:
    """The engine class of a backend (each module imports its library only when an engine is built)."""
    if backend == "mlx":
        from polyasr.engines.mlx import MlxEngine

        return MlxEngine
    from polyasr.engines.cuda import CudaEngine

    return CudaEngine


@pytest.fixture(scope="session")
def backend() -> Backend:
    return BACKEND


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def tiny_env(tiny: TinyModels, **extra: str) -> dict[str, str]:
    """Environment for a server on the tiny checkpoints, on the CPU."""
    env = {
        "POLYASR_MODEL": str(tiny.asr),
        "POLYASR_ALIGNER_MODEL": str(tiny.aligner),
        "POLYASR_DEVICE": "cpu",
        "POLYASR_DTYPE": "float32",
        "HF_HUB_OFFLINE": "1",
        # Tests stop servers with clients still connected: a short drain leaves
        # LiveServer.stop's wait room to close the archives (polyasr.api.drain).
        "POLYASR_SHUTDOWN_GRACE_SEC": "2",
    }
    env.update(extra)
    return env


@pytest.fixture
def make_settings(tiny: TinyModels, tmp_path: Path, backend: Backend) -> Any:
    def make(**extra: str) -> Settings:
        env = tiny_env(tiny, **{"POLYASR_LOG_DIR": str(tmp_path / "logs"), **extra})
        return load_settings(backend, env)

    return make


@pytest.fixture
def make_engine(backend: Backend) -> Any:
    return engine_class(backend)


class SpyEngine:
    """The real engine, with a record of what reached ``transcribe`` and ``align``.

    ``calls`` lists ``(method, model)`` in call order, across both units.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.batches: list[list[Any]] = []
        self.aligned: list[tuple[Any, str, str]] = []  # (clip, text, language)
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def transcribe(self, model: Any, clips: list[Any], should_stop: Any = None) -> list[Any]:
        self.batches.append(list(clips))
        self.calls.append(("transcribe", model))
        return self._engine.transcribe(model, clips, should_stop)

    def align(self, model: Any, clip: Any, text: str, language: str) -> list[Any]:
        self.aligned.append((clip, text, language))
        self.calls.append(("align", model))
        return self._engine.align(model, clip, text, language)


LOOPBACK = ("127.0.0.1", 50000)
TEST_CLIENT = ("testclient", 50000)  # Starlette's default: not a loopback address
TEST_BASE_URL = "http://127.0.0.1"


@pytest.fixture
def make_client(make_settings: Any, make_engine: Any, tmp_path: Path) -> Iterator[Any]:
    """Start the app in process on the real engine of this run, wrapped in a
    :class:`SpyEngine`; ``peer`` is the client address the app sees."""
    clients: list[TestClient] = []

    def make(peer: tuple[str, int] = TEST_CLIENT, **env: str) -> tuple[TestClient, SpyEngine]:
        settings = make_settings(**env)
        engine = SpyEngine(make_engine(settings))
        app = create_app(engine, settings, base_dir=tmp_path)
        # An IP base URL: the Host check (polyasr.api.access) refuses TestClient's "testserver".
        client = TestClient(app, base_url=TEST_BASE_URL, raise_server_exceptions=False, client=peer)
        client.__enter__()
        clients.append(client)
        return client, engine

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A real server process (``server.py`` / ``cuda/server.py``) on loopback."""

    def __init__(self, backend: str, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "POLYASR_PORT": str(self.port), "POLYASR_HOST": "127.0.0.1"}
        self.log_path = log_path
        self.logs: Path | None = None  # the server's archive root, when a helper set one
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRY_POINTS[backend])],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def serving(backend: str, tiny: TinyModels, logs: Path, **extra: str) -> Iterator[LiveServer]:
    """A ready server archiving under ``logs`` (as ``server.logs``) for the block."""
    server = LiveServer(backend, tiny_env(tiny, POLYASR_LOG_DIR=str(logs), **extra), logs / "server.log")
    server.logs = logs
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_server(tiny: TinyModels, backend: Backend, tmp_path: Path) -> Iterator[Any]:
    """Start a real server process; call with extra env, get a ready LiveServer."""
    started: list[LiveServer] = []

    def start(**extra: str) -> LiveServer:
        env = tiny_env(tiny, **{"POLYASR_LOG_DIR": str(tmp_path / "logs"), **extra})
        server = LiveServer(backend, env, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


KEYED_KEY = "s3cret-key_42"
INSECURE_HOST = "polyasr.test"  # a name browsers do not treat as a secure context (unlike 127.0.0.1)


@pytest.fixture(scope="session")
def keyed_server(
    tiny: TinyModels, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One server with an API key, shared by the access tests
    (tests/live/test_access.py), the tests of what a person reads when
    something is wrong (tests/live/test_user_errors.py) and the page's own in
    tests/browser. Besides this machine's names it answers the Hosts
    ``asr.lan`` and ``polyasr.test`` (which the browser tests map to loopback
    to get a page outside a secure context), and the origin
    ``https://app.example``. No test that shares it relies on which models
    are resident."""
    with serving(
        backend,
        tiny,
        tmp_path_factory.mktemp("keyed"),
        POLYASR_API_KEY=KEYED_KEY,
        POLYASR_ALLOWED_ORIGINS="https://app.example",
        POLYASR_ALLOWED_HOSTS=f"asr.lan,{INSECURE_HOST}",
        POLYASR_STREAMING_PROBE="0",
    ) as server:
        yield server


@pytest.fixture
def ieee_floats() -> None:
    """Restore the processor's IEEE float mode before a hypothesis test.

    qwen-asr imports nagisa, whose DyNet build sets flush-to-zero on the
    thread that loads it; once any in-process test has loaded the CUDA engine,
    hypothesis cannot draw subnormal floats and refuses to run. glibc's
    ``fesetenv(FE_DFL_ENV)`` puts the default mode back for this thread.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libm.so.6").fesetenv(ctypes.c_void_p(-1))
