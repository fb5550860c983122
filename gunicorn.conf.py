"""gunicorn reads this file when started in the repository root (``gunicorn ... wsgi:app``); ``faceapp serve``
passes the same module directly. The settings and hooks live in ``app/gunicorn_hooks.py``."""
from app.gunicorn_hooks import *  # noqa: F401,F403
