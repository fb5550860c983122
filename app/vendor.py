"""Front-end libraries installed from npm (package.json) into a git-ignored node_modules/,
served from /vendor/ so the app needs no CDN and works offline."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, send_from_directory

bp = Blueprint("vendor", __name__)

# Only the browser builds the pages use; nothing else under node_modules is reachable.
VENDOR_FILES = {
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
}


@bp.get("/vendor/<name>")
def vendor_file(name: str):
    rel = VENDOR_FILES.get(name)
    if rel is None:
        abort(404)
    return send_from_directory(current_app.config["NODE_MODULES"], rel, max_age=86400)
