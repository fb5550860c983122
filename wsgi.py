"""WSGI entry point: `gunicorn -w 1 --threads 16 wsgi:app`, `flask --app wsgi analyze ...`."""
from app import create_app, socketio  # noqa: F401  (socketio for `socketio.run` users)

app = create_app()
