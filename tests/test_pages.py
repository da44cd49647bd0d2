"""The pages for people: served with a same-origin-only policy, assets from the package, nothing
outside geoservice/static reachable, and no page in the API spec."""

from __future__ import annotations

import re

import pytest

from geoservice.http.pages import PAGES, STATIC_DIR


@pytest.mark.parametrize("path", sorted(PAGES))
async def test_pages_are_html_with_a_strict_policy(client, path: str):
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    html = await response.text()
    # Every script and stylesheet comes from this service.
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/") or url.startswith("data:"), url


async def test_assets_and_the_root(client):
    response = await client.get("/static/common/map.js")
    assert response.status == 200
    assert "javascript" in response.content_type
    response = await client.get("/", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/console"
    for bad in ("/static/../settings.py", "/static/%2e%2e/settings.py", "/static/nope.js"):
        assert (await client.get(bad)).status in (403, 404), bad


async def test_no_asset_refers_to_another_origin():
    for path in STATIC_DIR.rglob("*"):
        if path.suffix in (".js", ".css", ".html"):
            text = path.read_text()
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path


async def test_pages_stay_out_of_the_spec(client):
    spec = await (await client.get("/openapi.json")).json()
    assert not set(spec["paths"]) & {*PAGES, "/", "/static/{filename}"}
    assert "/v1/events" in spec["paths"]
