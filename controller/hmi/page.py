"""The HMI page: three static files shipped in the package (no CDN: the line has no internet).

The files are read once, when the API is built; only these names are served, so no path from a
request ever reaches the file system. The page holds no data: it fetches everything from the API
with the viewer's rights (or the logged-in user's), so it is served to anyone who reaches the port.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from controller.errors import NotFound

CONTENT_TYPES = {"index.html": "text/html", "hmi.js": "text/javascript", "hmi.css": "text/css"}
# Only our own files, no inline script, no framing by another page; Trusted Types with no policy:
# the browser refuses any HTML string put into the page (innerHTML), so text from the API can
# only ever go in as text.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'; require-trusted-types-for 'script'; "
                               "trusted-types 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page(router: web.UrlDispatcher) -> None:
    """GET / (the page) and GET /static/{name} (its script and style)."""
    static = files("controller.hmi") / "static"
    bodies = {name: (static / name).read_bytes() for name in CONTENT_TYPES}

    def serve(name: str) -> web.Response:
        return web.Response(body=bodies[name], content_type=CONTENT_TYPES[name], charset="utf-8",
                            headers=PAGE_HEADERS)

    async def index(_: web.Request) -> web.Response:
        return serve("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in bodies or name == "index.html":
            raise NotFound(f"no HMI file named {name[:60]!r}")
        return serve(name)

    router.add_get("/", index)
    router.add_get("/static/{name}", asset)
