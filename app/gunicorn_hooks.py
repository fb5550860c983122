"""gunicorn server hooks (``-c python:app.gunicorn_hooks``; ``faceapp serve`` passes it)."""


def post_worker_init(worker):
    """Tell the app where it listens, so that its ready line names the address."""
    announce = getattr(worker.wsgi, "announce", None)
    if announce is not None and worker.sockets:
        announce(str(worker.sockets[0]))
