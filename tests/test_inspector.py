"""The web inspector: `/` serves its HTML to browsers, its assets resolve, JSON stays at `/api`.

The build under realtime_bridge/static/inspector is committed (no build step at run
time); these tests check the bridge serves that build, whatever its hashed names.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx

import realtime_bridge
from realtime_bridge.testing import RunningBridge

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
BUILD = Path(realtime_bridge.__file__).parent / "static" / "inspector"


class _AssetURLs(HTMLParser):
    """Every `src` and `href` in the page (scripts, stylesheets, preloads, icons)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


def asset_urls(html: str) -> list[str]:
    parser = _AssetURLs()
    parser.feed(html)
    return parser.urls


async def test_a_browser_gets_the_inspector_and_every_asset_it_names(
    bridge: RunningBridge,
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        page = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "accept" in page.headers["vary"].lower()
        assert "<title>realtime-bridge inspector</title>" in page.text
        urls = asset_urls(page.text)
        scripts = [u for u in urls if u.endswith(".js")]
        styles = [u for u in urls if u.endswith(".css")]
        # The built page, not the Vite source page (which names /src/main.ts).
        assert scripts, urls
        assert styles, urls
        assert all(u.startswith("/inspector/assets/") for u in urls), urls
        for url in urls:
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
            assert (BUILD / url.removeprefix("/inspector/")).read_bytes() == asset.content
        assert "javascript" in (await client.get(scripts[0])).headers["content-type"]
        assert "text/css" in (await client.get(styles[0])).headers["content-type"]


async def test_the_built_bundle_holds_the_client_and_the_page_wiring(
    bridge: RunningBridge,
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        page = await client.get("/", headers={"Accept": "text/html"})
        (script,) = [u for u in asset_urls(page.text) if u.endswith(".js")]
        bundle = (await client.get(script)).text
    # The TypeScript client's endpoints and the inspector's data sources are in the bundle.
    for needle in ["/ws/db_subscriptions", "/api/channels/", "/api/stats", "/health"]:
        assert needle in bundle, needle
    for element_id in ["mode", "clients", "events", "rate-chart", "watch-form"]:
        assert re.search(rf'id="{element_id}"', page.text), element_id


async def test_json_clients_still_get_the_index_at_slash_and_at_api(
    bridge: RunningBridge,
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        default = await client.get("/")  # httpx sends Accept: */*
        explicit = await client.get("/", headers={"Accept": "application/json"})
        api = await client.get("/api", headers={"Accept": BROWSER_ACCEPT})
    for response in (default, explicit, api):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert "position-updates" in body["channels"]
        assert body["endpoints"]["inspector"] == "/"
    assert "accept" in default.headers["vary"].lower()
    assert "accept" not in api.headers.get("vary", "").lower()


async def test_unknown_assets_are_json_404s(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        missing = await client.get("/inspector/assets/no-such-file.js")
        escape = await client.get("/inspector/../../pyproject.toml")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert escape.status_code == 404
