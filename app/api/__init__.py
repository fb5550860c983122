"""JSON API: /api/v1/..."""
from flask import Blueprint

bp = Blueprint("api", __name__)

from app.api import images, health  # noqa: E402,F401  (routes register on import)
