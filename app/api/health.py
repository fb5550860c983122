"""Liveness and readiness probes, model summaries and the OpenAPI document."""
from pathlib import Path

from flask import Blueprint, send_from_directory

from app import __version__
from app.api import bp as api_bp
from app.errors import error_response
from app.inference import get_service

probes = Blueprint("probes", __name__)


@probes.get("/healthz")
def healthz():
    """The process answers."""
    return {"status": "ok"}


@probes.get("/readyz")
def readyz():
    """Models loaded and warmed up; says on which device."""
    service = get_service()
    if not service.ready:
        return error_response(503, "models are still loading", "not_ready")
    return {"status": "ready", "device": service.device_description, "version": __version__,
            "models": service.describe_models()}


@api_bp.get("/models")
def models():
    return {"models": get_service().describe_models(), "device": get_service().device_description}


@api_bp.get("/openapi.yaml")
def openapi_spec():
    return send_from_directory(Path(__file__).parent, "openapi.yaml", mimetype="application/yaml")
