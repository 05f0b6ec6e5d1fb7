"""The playground: a web page at GET / that shows tokens, next-token probabilities and the pixel classifier at work.

Everything the page loads comes from this server (service/api/static/ and /static/symbols.json): no build step, no CDN.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from model.pixels import CONFIG_FILE, DEFAULT_DIR, SYMBOL_DRAWINGS
from service.runtime.litserve_adapter import take_root_route

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
# The page is small and changes with the server; revalidating each load keeps an old app.js from outliving an update.
NO_STALE = {"Cache-Control": "no-cache"}


class _StaticFiles(StaticFiles):
    """StaticFiles whose answers say no-cache, as the page itself does."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_STALE)
        return response


def symbol_patterns(pixels_dir: Path = DEFAULT_DIR) -> dict[str, Any]:
    """The classifier's symbols in its own order, each as 3 rows of 3 pixels (-1 black, 1 white).

    The names come from the model folder's config.json (the symbols it was trained on); their drawings live in
    model/pixels.py. A name without a drawing gets none: the page still shows its probability.
    """
    config = json.loads((Path(pixels_dir) / CONFIG_FILE).read_text())
    symbols = []
    for name in config["symbols"]:
        rows = SYMBOL_DRAWINGS.get(name)
        pixels = [[1 if c == "#" else -1 for c in row] for row in rows] if rows else None
        symbols.append({"name": name, "pixels": pixels})
    return {"symbols": symbols}


def add_playground(app: FastAPI, pixels_dir: Path = DEFAULT_DIR) -> None:
    """Serve the playground at GET / (in place of LitServe's "litserve running") and its files under /static/."""
    take_root_route(app)  # LitServe's own GET / would leave ours unreachable
    # Read once at start-up: a broken model folder then fails the server at once, not the first page load.
    symbols = symbol_patterns(pixels_dir)

    async def index() -> FileResponse:
        return FileResponse(INDEX_FILE, media_type="text/html; charset=utf-8", headers=NO_STALE)

    async def symbols_json() -> JSONResponse:
        return JSONResponse(symbols, headers=NO_STALE)

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    # Registered before the mount: Starlette tries routes in order, and the mount would answer 404 for it.
    app.add_api_route("/static/symbols.json", symbols_json, methods=["GET"], include_in_schema=False)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
