"""gunicorn's target: ``faceapp serve`` (or ``gunicorn -w 1 --threads 32 -c python:app.gunicorn_hooks wsgi:app``).

``app`` answers at once: 503 ``not_ready`` while the models load on a thread, then the real app
(``app.startup``). The CLI builds the app itself: ``faceapp analyze`` or ``flask --app app analyze``.
"""
from app import configure_logging, create_app
from app.config import Config
from app.startup import DeferredApp

configure_logging(Config.LOG_LEVEL)
app = DeferredApp(create_app)
