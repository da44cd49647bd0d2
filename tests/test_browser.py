"""The console, the simulator and /docs in headless Chromium against a real listening server.

Chromium is Debian's (`make install` installs it with apt when it can); playwright only drives
it (no browser download). Missing, the tests fail with what to do: they never skip silently.
Screenshots go to the test's tmp dir; with GEOSERVICE_UPDATE_SCREENSHOTS=1 also to docs/img/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.conftest import AppClientFactory, TenantFactory, TenantKeys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ZONES = ROOT / "zones" / "switzerland.geojson"
SCREENSHOTS = ROOT / "docs" / "img"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 860}
BAHNHOFSTRASSE = (47.3717, 8.5392)  # centre of zrh-bahnhofstrasse, radius 80 m
PARADEPLATZ = (47.3697, 8.5388)  # centre of zrh-paradeplatz, radius 50 m
WAIT_MS = 15_000

pytestmark = pytest.mark.slow


def chromium_path() -> str:
    path = os.environ.get("GEOSERVICE_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "chromium is not installed: `make install` installs it with apt when run as root "
            "(or: apt-get install chromium; GEOSERVICE_CHROMIUM=/path/to/chromium)"
        )
    return path


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class Watched:
    """A page whose console errors, uncaught exceptions and requests are collected."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", self._request)
        page.set_default_timeout(WAIT_MS)

    def _request(self, request: Any) -> None:
        url = request.url
        if not (url.startswith(self.base) or url.startswith("data:")):
            self.foreign.append(url)

    def assert_clean(self, *expected_statuses: int) -> None:
        """No script errors, no failed requests other than the answers the test provoked."""
        provoked = tuple(f"with a status of {status} " for status in expected_statuses)
        assert [e for e in self.errors if not any(p in e for p in provoked)] == []
        assert self.foreign == []  # no CDN, fonts or tiles: everything from the service


async def open_page(browser: Browser, base: str, path: str, **context: Any) -> Watched:
    ctx: BrowserContext = await browser.new_context(viewport=VIEWPORT, **context)
    page = await ctx.new_page()
    watched = Watched(page, base)
    await page.goto(base + path)
    return watched


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    await page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    if os.environ.get("GEOSERVICE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, SCREENSHOTS / name)


def zurich_zones(tmp_path: Path) -> Path:
    """The example file's Zurich zones, always open (so offers come at any hour of the run)."""
    collection = json.loads(EXAMPLE_ZONES.read_text())
    features = [f for f in collection["features"] if f["id"].startswith("zrh-")]
    for feature in features:
        feature["properties"].pop("opening_hours", None)
    path = tmp_path / "zurich.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


async def shop(make_client: AppClientFactory, make_tenant: TenantFactory):
    api = await make_client(ping_rate_per_s=1000.0, ping_burst=1000)
    tenant = await make_tenant("sapori")
    offer = {
        "title": "A free espresso with any purchase",
        "body": "Today, in this shop.",
        "fallback": True,
        "max_per_customer": 5,
    }
    response = await api.put("/v1/offers/welcome-espresso", json=offer, headers=tenant.secret)
    assert response.status == 201, await response.text()
    return api, tenant, str(api.make_url("")).rstrip("/")


async def ping(api, tenant: TenantKeys, device: str, *positions: tuple[float, float]) -> dict:
    t0 = int(time.time() * 1000) - 1_000 * len(positions)
    body = {
        "device_id": device,
        "consent": {"location": True, "marketing": True},
        "pings": [
            {"lat": lat, "lon": lon, "accuracy_m": 8, "ts": t0 + i * 1000}
            for i, (lat, lon) in enumerate(positions)
        ],
    }
    response = await api.post("/v1/pings", json=body, headers=tenant.sdk)
    assert response.status == 200, await response.text()
    answer: dict = await response.json()
    return answer


async def test_console_login_import_map_events_and_zone_edit(
    browser: Browser, make_client: AppClientFactory, make_tenant: TenantFactory, tmp_path: Path
):
    api, tenant, base = await shop(make_client, make_tenant)
    watched = await open_page(browser, base, "/console")
    page = watched.page

    # A wrong key is refused with a reason; the SDK key is not enough either.
    await page.fill("#secret-key", tenant.sdk_key)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login-error:has-text('secret key')")
    await page.fill("#secret-key", tenant.secret_key)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#map[data-zone-count='0']")
    assert await page.text_content("#tenant-name") == "Sapori (sapori)"
    assert await page.evaluate("sessionStorage.getItem('geoservice.sk')") == tenant.secret_key

    # Import a GeoJSON file: every zone is drawn, circles to scale, the mall as a path.
    zones_file = zurich_zones(tmp_path)
    count = len(json.loads(zones_file.read_text())["features"])
    await page.set_input_files("#upload-file", str(zones_file))
    await page.wait_for_selector(f"#map[data-zone-count='{count}']")
    assert f"{count} created" in (await page.text_content("#upload-result") or "")
    assert await page.locator("#map g.zone").count() == count
    assert await page.locator("#map g.zone[data-shape='polygon'] path.shape").count() == 1
    circle = page.locator("#map g.zone[data-zone-id='zrh-bahnhofstrasse'] ellipse.shape")
    assert float(await circle.get_attribute("ry") or 0) == pytest.approx(80)

    # Pings sent to the API show up in the console's live list within its polling period.
    await ping(api, tenant, "phone-a", BAHNHOFSTRASSE)
    await ping(api, tenant, "phone-b", PARADEPLATZ, BAHNHOFSTRASSE)
    await page.wait_for_selector(
        "#events tbody tr[data-type='enter'][data-zone-id='zrh-bahnhofstrasse']"
    )
    await page.wait_for_selector("#events tbody tr[data-type='offer_issued']")
    await page.wait_for_selector(
        "#events tbody tr[data-type='exit'][data-zone-id='zrh-paradeplatz']"
    )
    await page.wait_for_selector("#map g.zone.active[data-zone-id='zrh-bahnhofstrasse']")

    # Select the zone: its events and offers; change radius and opening hours.
    await page.click("#zone-list li[data-zone-id='zrh-bahnhofstrasse']")
    await page.wait_for_selector("#zone-panel[data-zone-id='zrh-bahnhofstrasse']")
    await page.wait_for_selector("#zone-events tbody tr[data-type='enter']")
    await page.wait_for_selector("#zone-offers tbody tr[data-type='offer_issued']")
    await page.fill("#zone-radius", "150")
    await page.uncheck("#zone-always-open")
    await page.fill("#hours-sat", "09:00-17:00")
    await page.fill("#hours-sun", "")
    await page.click("#zone-form button[type=submit]")
    await page.wait_for_selector("#zone-saved:has-text('Saved')")
    stored = await (await api.get("/v1/zones/zrh-bahnhofstrasse", headers=tenant.secret)).json()
    assert stored["properties"]["radius_m"] == 150
    hours = stored["properties"]["opening_hours"]
    assert hours["mon"] == [["08:00", "20:00"]]
    assert hours["sat"] == [["09:00", "17:00"]]
    assert "sun" not in hours
    assert float(await circle.get_attribute("ry") or 0) == pytest.approx(150)

    # A bad value is the service's 422, shown with the field it names.
    await page.fill("#hours-mon", "20:00-08:00")
    await page.click("#zone-form button[type=submit]")
    await page.wait_for_selector("#zone-error:has-text('opening_hours')")
    await page.fill("#hours-mon", "08:00-20:00")
    await page.click("#zone-form button[type=submit]")
    await page.wait_for_selector("#zone-saved:has-text('Saved')")
    assert await page.is_hidden("#zone-error")

    # Zoom out from the zone with the wheel (city centre, names shown) for the picture.
    await page.click("#zone-focus")
    box = await page.locator("#map").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        await page.mouse.wheel(0, 250)
    await page.wait_for_selector("#map g.zones.labelled")
    await page.wait_for_timeout(300)
    await screenshot(page, tmp_path, "console.png")
    watched.assert_clean(403, 422)  # the SDK key's log-in and the refused save above


async def test_simulator_posts_the_browsers_location_and_shows_event_and_offer(
    browser: Browser, make_client: AppClientFactory, make_tenant: TenantFactory, tmp_path: Path
):
    api, tenant, base = await shop(make_client, make_tenant)
    response = await api.post(
        "/v1/zones/import",
        data=zurich_zones(tmp_path).read_bytes(),
        headers={**tenant.secret, "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    lat, lon = BAHNHOFSTRASSE
    watched = await open_page(
        browser,
        base,
        "/simulator",
        geolocation={"latitude": lat, "longitude": lon, "accuracy": 12},
        permissions=["geolocation"],
    )
    page = watched.page
    await page.fill("#sdk-key", tenant.sdk_key)
    await page.dispatch_event("#sdk-key", "change")
    await page.fill("#secret-key", tenant.secret_key)
    await page.dispatch_event("#secret-key", "change")  # draws the zones
    await page.wait_for_selector("#map[data-zone-count='16']")
    await page.fill("#customer-id", "c-1001")
    await page.dispatch_event("#customer-id", "change")

    await page.click("#locate")
    enter = page.locator(".notification[data-type='enter'][data-zone-id='zrh-bahnhofstrasse']")
    await enter.wait_for()
    card = page.locator(".offer-card[data-offer-id='welcome-espresso']")
    await card.wait_for()
    assert "A free espresso" in (await card.text_content() or "")
    phone = page.locator("#map circle.phone")
    assert float(await phone.get_attribute("data-lat") or 0) == pytest.approx(lat)

    # The service has it as the phone posted it: consent with the first request, the customer.
    page_of_events = await (await api.get("/v1/events", headers=tenant.secret)).json()
    assert [(e["type"], e["zone_id"]) for e in page_of_events["events"]] == [
        ("offer_issued", "zrh-bahnhofstrasse"),
        ("enter", "zrh-bahnhofstrasse"),
    ]
    device = await page.input_value("#device-id")
    export = await (await api.get("/v1/customers/c-1001/export", headers=tenant.secret)).json()
    assert len(export["devices"]) == 1
    assert device not in json.dumps(export)  # held by pseudonym only

    # Typing a position far away is a second ping (no consent needed now): the exit.
    await page.fill("#lat", "47.3817")
    await page.fill("#lon", "8.5392")
    await page.click("#settings button[type=submit]")
    await page.locator(".notification[data-type='exit']").wait_for()
    assert await page.get_attribute("#phone", "data-pings") == "2"

    # Back at the store for the picture.
    await page.click("#locate")
    await page.locator(".notification[data-type='enter']").nth(1).wait_for()
    await screenshot(page, tmp_path, "simulator.png")
    watched.assert_clean()


async def test_docs_page_renders_every_operation_of_the_spec(
    browser: Browser, make_client: AppClientFactory
):
    api = await make_client()
    base = str(api.make_url("")).rstrip("/")
    spec = await (await api.get("/openapi.json")).json()
    operations = sum(len(item) for item in spec["paths"].values())
    watched = await open_page(browser, base, "/docs")
    page = watched.page
    await page.wait_for_selector(f"#operations[data-count='{operations}']")
    events = page.locator("details.op[data-method='GET'][data-path='/v1/events']")
    await events.locator(":scope > summary").click()
    text = await events.text_content() or ""
    for expected in ("secret key", "limit", "zone_id", "next_cursor", "offer_id", "422"):
        assert expected in text
    put_zone = page.locator("details.op[data-method='PUT'][data-path='/v1/zones/{zone_id}']")
    await put_zone.locator(":scope > summary").click()
    assert "opening_hours" in (await put_zone.text_content() or "")
    await page.fill("#filter", "post /v1/redemptions")
    assert await page.locator("details.op:visible").count() == 1
    watched.assert_clean()
