"""The dictation page is served without a browser: GET / and every asset it
references, with content types a browser accepts (a worklet module must be
JavaScript). The page's behaviour is tested in Chromium by tests/browser/test_browser.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from polyasr.api.access import KEY_SUBPROTOCOL_PREFIX, SUBPROTOCOL
from polyasr.api.app import create_app
from tests.conftest import TEST_BASE_URL


def test_index_and_its_assets_are_served(make_settings: Any, make_engine: Any, tmp_path: Path) -> None:
    settings = make_settings()
    client = TestClient(
        create_app(make_engine(settings), settings, base_dir=tmp_path), base_url=TEST_BASE_URL
    )  # no lifespan needed
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(web/[^"]+)"', index.text)
    assert sorted(assets) == ["web/app.js", "web/style.css"]
    app_js = client.get("/web/app.js").text
    worklet = re.search(r'addModule\("(web/[^"]+)"\)', app_js)
    assert worklet is not None
    types = {"js": "javascript", "css": "text/css"}
    for asset in [*assets, worklet.group(1)]:
        response = client.get(f"/{asset}")
        assert response.status_code == 200, asset
        assert types[asset.rsplit(".", 1)[1]] in response.headers["content-type"], asset
    assert client.get("/web/missing.js").status_code == 404


def test_the_page_passes_an_api_key(make_settings: Any, make_engine: Any, tmp_path: Path) -> None:
    """Keyed servers: the page has a key field, kept in localStorage, sent as a
    Bearer header and offered as the socket subprotocol the server accepts."""
    settings = make_settings(POLYASR_API_KEY="k")
    client = TestClient(
        create_app(make_engine(settings), settings, base_dir=tmp_path), base_url=TEST_BASE_URL
    )
    assert client.get("/").status_code == 200 and client.get("/web/app.js").status_code == 200  # open
    assert 'id="api-key"' in client.get("/").text
    app_js = client.get("/web/app.js").text
    assert "localStorage" in app_js and "Authorization: `Bearer ${apiKey()}`" in app_js
    assert f'"{SUBPROTOCOL}", `{KEY_SUBPROTOCOL_PREFIX}${{apiKey()}}`' in app_js
    assert client.post("/model/unload").status_code == 401  # what the key is for
