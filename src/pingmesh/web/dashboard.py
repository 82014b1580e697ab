"""The dashboard and the API documentation page: static files shipped inside the package.

Nothing is loaded from the internet: the pages, scripts and styles live in ``web/static`` and
every HTML answer carries a Content-Security-Policy that allows only this origin, so a stray
external reference fails loudly in the browser instead of leaking a request.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Response

# The files we serve, and their media types; anything else under /static is a 404.
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
    "alerts.js": "text/javascript; charset=utf-8",
    "smoke.js": "text/javascript; charset=utf-8",
    "sound.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)


# Other packaged files (e.g. the bandwidth page that issue 7 adds) are served by suffix.
MEDIA_BY_SUFFIX: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load() -> dict[str, bytes]:
    root = resources.files("pingmesh.web").joinpath("static")
    content = {name: root.joinpath(name).read_bytes() for name in STATIC_FILES}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.name not in content and suffix in MEDIA_BY_SUFFIX and entry.is_file():
            content[entry.name] = entry.read_bytes()
    return content


class StaticFiles:
    """The packaged static files, read once."""

    def __init__(self) -> None:
        self._content = _load()

    def response(self, name: str) -> Response:
        """The file ``name`` as an HTTP response (404 if we do not ship it)."""
        content = self._content.get(name)
        if content is None:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        headers = {
            # Revalidate every time: the files are small and must follow an upgrade.
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if name.endswith(".html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        media = STATIC_FILES.get(name) or MEDIA_BY_SUFFIX["." + name.rsplit(".", 1)[-1]]
        return Response(content=content, media_type=media, headers=headers)


def dashboard_router(files: StaticFiles | None = None) -> APIRouter:
    """``/`` (the dashboard), ``/docs`` (the API documentation) and ``/static/{name}``."""
    static = files or StaticFiles()
    web = APIRouter(include_in_schema=False)

    @web.get("/")
    def index() -> Response:
        return static.response("index.html")

    @web.get("/docs")
    def docs() -> Response:
        return static.response("docs.html")

    @web.get("/favicon.ico")
    def favicon() -> Response:
        return static.response("favicon.svg")

    @web.get("/static/{name}")
    def static_file(name: str) -> Response:
        return static.response(name)

    return web
