"""HTTP: pages for people, served from geoservice/static: the retailer console (/console), the
phone simulator (/simulator) and the API reference rendered from /openapi.json (/docs).

They are plain files calling the public API from the browser with the key the person types,
so they hold no privilege of their own and are not part of /openapi.json (they are not API).
Nothing is loaded from other origins; the Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from aiohttp import web

from geoservice.http.routing import EndpointTable, Handler

STATIC_DIR = Path(str(files("geoservice") / "static"))

# Only this origin: no CDN, fonts, tiles or inline script (so an injected string cannot run).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release's pages must not mix with an old cached script.
    "Cache-Control": "no-cache",
}
PAGES = {
    "/console": "console/index.html",
    "/simulator": "simulator/index.html",
    "/docs": "docs/index.html",
}


@dataclass
class PageTable(EndpointTable):
    """Routes outside the endpoint table's spec: the pages and their static assets."""

    pages: dict[str, str] = field(default_factory=lambda: dict(PAGES))

    def add_to(self, app: web.Application) -> None:
        super().add_to(app)
        for path, name in self.pages.items():
            app.router.add_get(path, _page_handler((STATIC_DIR / name).read_bytes()))
        app.router.add_get("/", _to_console)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)


def _page_handler(html: bytes) -> Handler:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=html, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )

    return page


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console")


routes = PageTable()
