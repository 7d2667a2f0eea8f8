"""Where a model's weights come from: a local folder, the Hugging Face cache, or the hub.

Two questions, both answered without downloading anything: are the weights
here now (``/health``'s ``weights_missing``), and, when they are not, can a
load get them at all. The second one lets a load that is bound to fail (a
local path with a typo, a folder without the model in it, a hub id on a
machine that cannot reach the hub) fail at once with one line that says what
to do, instead of the loaders' retries, tracebacks and guesses.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
# Long enough for a slow LAN; a load that goes on to download waits far longer.
HUB_CONNECT_TIMEOUT_SEC = 3.0


def _is_path(model_id: str) -> bool:
    """A value that means a place on disk, never a hub id: absolute, ``./x``,
    ``../x``, ``~/x``, or a folder that exists."""
    path = Path(model_id).expanduser()
    return path.is_absolute() or model_id.startswith((".", "~")) or path.is_dir()


def check_weights(model_id: str) -> tuple[bool, str]:
    """Whether ``model_id`` resolves offline: a local directory, or a complete
    snapshot in the Hugging Face cache. Never downloads."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return True, str(path)
        return False, f"{path} has no config.json"
    if _is_path(model_id):
        return False, f"{model_id} is not a folder" if path.exists() else f"{model_id} does not exist"
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(model_id, local_files_only=True, allow_patterns=WEIGHT_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - every lookup failure means "not present"
        return False, f"{model_id} is not in the local Hugging Face cache ({type(exc).__name__})"
    if not any(snapshot.glob("*.safetensors")):
        return False, f"{model_id} snapshot has no *.safetensors files"
    return True, str(snapshot)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode, or no TCP connection), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_CONNECT_TIMEOUT_SEC):
            return None
    except OSError as exc:
        return f"the hub ({constants.ENDPOINT}) is unreachable: {exc.strerror or type(exc).__name__}"


def cannot_load(model_id: str, setting: str) -> str | None:
    """Why loading ``model_id`` is bound to fail, or None.

    A value that looks like a path is checked as a path before anything
    else: it must be a folder with a ``config.json`` (the loaders would
    otherwise take it for a hub id, or guess a model type from a parent
    folder, and fail with a wall of text). A hub id fails here only when it is
    missing from the local cache while the hub cannot be reached; a cached
    snapshot or a reachable hub is left to the loader. ``setting`` names the
    variable that chose the model, for the hint.
    """
    if _is_path(model_id):
        present, detail = check_weights(model_id)
        if present:
            return None
        return f"{detail}; set {setting} to the folder that holds the model's config.json"
    if check_weights(model_id)[0]:
        return None
    why = _hub_unreachable()
    if why is None:
        return None
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME") or str(Path(constants.HF_HUB_CACHE).parent)
    return (
        f"{model_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"set {setting} to a local folder holding the weights, or HF_HOME (now {home}) "
        "to a cache that has them"
    )
