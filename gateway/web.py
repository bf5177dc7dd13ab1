"""The gateway's browser-facing pages: the web console at `/` and Swagger UI at `/docs`, both offline.

FastAPI's own /docs loads Swagger UI from a CDN, which leaves the page blank without internet; the
assets come from the swagger-ui-bundle-v2 package instead (Swagger UI 5, which reads OpenAPI 3.1).
The console is served from exact paths (not a catch-all mount at /), so every other path answers as
the API always did: 404 for an unknown path, 405 for a known path with another method.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from console import STATIC_DIR

DOCS_ASSETS = "/docs-assets"


def install_web(app: FastAPI) -> None:
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.mount("/js", StaticFiles(directory=STATIC_DIR / "js"), name="console-js")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/style.css", include_in_schema=False)
    async def console_style() -> FileResponse:
        return FileResponse(STATIC_DIR / "style.css")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
