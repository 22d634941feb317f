"""The API contract and its reader: /openapi.json behind the API key, /docs (Swagger UI) only on request.

Swagger UI comes from assets bundled in service/api/static/swagger-ui (vendored from npm swagger-ui-dist,
see SOURCE.md there), never from a CDN: a plant network is often air-gapped, and a page that loads code
from the internet is a supply-chain path into the line. With BRIDGENET_DOCS=1 the page embeds the contract
(so it opens without a key, for commissioning); "Try it out" still needs the key via "Authorize".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from service.api.errors import ApiError
from service.api.security import require_any_key

SWAGGER_UI_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
# The only files /docs/assets serves: name → media type. Nothing else in the folder is reachable.
SWAGGER_UI_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script id="openapi-spec" type="application/json">{spec}</script>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  spec: JSON.parse(document.getElementById("openapi-spec").textContent),
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null
}});
</script>
</body>
</html>
"""


class AssetNotFoundError(ApiError):
    status, code = 404, "not_found"


def docs_page(spec: dict[str, Any]) -> str:
    """The Swagger UI page with `spec` embedded. "<" is escaped so no string in the spec can close the
    script element; the page references only the bundled assets (relative URLs, so a path prefix works)."""
    embedded = json.dumps(spec, ensure_ascii=True).replace("<", "\\u003c")
    title = str(spec.get("info", {}).get("title", "API")).replace("<", "&lt;").replace("&", "&amp;")
    return _PAGE.format(title=title, spec=embedded)


def docs_router(docs_enabled: bool) -> APIRouter:
    """/openapi.json always (API key when one is configured); /docs and its assets only when enabled."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json", dependencies=[Depends(require_any_key)])
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    if docs_enabled:

        @router.get("/docs")
        async def docs(request: Request) -> HTMLResponse:
            return HTMLResponse(docs_page(request.app.openapi()))

        @router.get("/docs/assets/{name}")
        async def docs_asset(name: str) -> FileResponse:
            media_type = SWAGGER_UI_ASSETS.get(name)
            if media_type is None:
                raise AssetNotFoundError(f"no documentation asset named {name!r}")
            return FileResponse(SWAGGER_UI_DIR / name, media_type=media_type)

    return router
