"""Live webcam mode: the /live page, and the Socket.IO namespace that analyses the frames it sends."""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, render_template
from flask_socketio import SocketIO

from app.live.namespace import NAMESPACE, LiveNamespace, LiveSettings, handle_error

bp = Blueprint("live", __name__)


@bp.get("/live")
def page():
    return render_template("live.html", default_alpha=current_app.config["LIVE_DEFAULT_ALPHA"])


def init_app(app: Flask, socketio: SocketIO) -> None:
    """Adds the page and the ``/live`` namespace.

    Call it after ``socketio.init_app(app)``: that builds a fresh Socket.IO server for each app, and
    registering on that server (not on the unbound ``SocketIO``) means apps built one after another,
    as the tests do, never pile up handlers or share sessions.
    """
    app.register_blueprint(bp)
    socketio.on_namespace(LiveNamespace(NAMESPACE, LiveSettings.from_config(app.config)))
    socketio.on_error(NAMESPACE)(handle_error)
