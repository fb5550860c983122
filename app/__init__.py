"""Application factory: ``create_app(config)`` builds the Flask app, Socket.IO and the one
inference service of the process, and registers a blueprint per concern."""
from __future__ import annotations

import logging

from flask import Flask
from flask_socketio import SocketIO

from app.budget import PixelBudget
from app.config import Config

__version__ = "0.1.0"

# Created unbound so that importing the package builds no app and loads no model.
socketio = SocketIO()
SOCKET_NAMESPACES = ["/live", "/videos"]


def create_app(config_class: type = Config, service=None) -> Flask:
    """Build the application.

    Args:
        config_class: a ``Config`` (sub)class; tests override only what must differ.
        service: an already built ``InferenceService`` to share (tests reuse one across apps);
            by default one is built from the config, which loads and warms up every model and
            fails loudly if a weight file is missing or corrupt.
    """
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config.from_object(config_class)
    app.json.sort_keys = False  # keep class order in probabilities and the documented key order
    if not (app.debug or app.testing):
        configure_logging(app.config["LOG_LEVEL"])

    if service is None:
        from app.inference.service import InferenceService

        service = InferenceService.from_config(app.config)
    app.extensions["inference"] = service
    app.extensions["pixel_budget"] = PixelBudget(app.config["PIXEL_BUDGET"], app.config["PIXEL_BUDGET_WAIT_S"])

    # Only our namespaces: a connection to any other (or to none) is refused, not held. With REDIS_URL,
    # emits go through Redis's pub/sub and reach a socket whichever process holds it; passed every time
    # (None: in this process only), as the module's SocketIO keeps the options of its last init_app.
    socketio.init_app(app, async_mode="threading", max_http_buffer_size=app.config["MAX_CONTENT_LENGTH"],
                      namespaces=SOCKET_NAMESPACES, client_manager=socket_client_manager(app.config))

    from app import cli, errors, live, security, video
    from app.connections import ConnectionGuard, ConnectionLimits, close_connections_without_namespace
    from app.api import bp as api_bp
    from app.api.health import probes
    from app.photo import bp as photo_bp
    from app.vendor import bp as vendor_bp

    errors.init_app(app)
    socketio.on_error_default(errors.socket_error)  # /live has its own (its acks carry "seq")
    app.wsgi_app = ConnectionGuard(app.wsgi_app, ConnectionLimits.from_config(app.config))
    close_connections_without_namespace(socketio.server, SOCKET_NAMESPACES, app.config["SOCKET_JOIN_GRACE_S"])
    limiter = security.init_app(app)  # after socketio.init_app: its headers wrap Socket.IO's answers too
    cli.init_app(app)
    app.register_blueprint(photo_bp)
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(probes)
    app.register_blueprint(vendor_bp)
    video.init_app(app, socketio)  # after socketio.init_app, as live
    live.init_app(app, socketio)  # after socketio.init_app: it registers on this app's server
    for blueprint in (api_bp, video.api_bp):
        limiter.limit(app.config["RATE_LIMIT"])(blueprint)
        limiter.limit(app.config["UPLOAD_RATE_LIMIT"], methods=["POST"])(blueprint)

    @app.context_processor
    def inject_globals():
        return {
            "inference_device": service.device_description,
            "app_version": __version__,
            "max_upload_mb": app.config["MAX_UPLOAD_MB"],
            "socket_transports": socket_transports(app.config),
        }

    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXIES"]  # outermost: every layer below sees the client's address
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)
    return app


def socket_client_manager(config):
    """Socket.IO's Redis manager when REDIS_URL is set (its channel under REDIS_KEY_PREFIX), else None."""
    if not config["REDIS_URL"]:
        return None
    import socketio as python_socketio

    return python_socketio.RedisManager(config["REDIS_URL"], channel=f"{config['REDIS_KEY_PREFIX']}socketio")


def socket_transports(config) -> str:
    """What the pages pass to the Socket.IO client: SOCKETIO_TRANSPORTS, else websocket only with REDIS_URL
    (several processes, no sticky sessions), else nothing (the client's default)."""
    return config["SOCKETIO_TRANSPORTS"] or ("websocket" if config["REDIS_URL"] else "")


def configure_logging(level: str) -> None:
    """One line per record on stderr; a no-op when logging is already configured."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
