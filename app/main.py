"""The ``faceapp`` command (``pip install -e .``; ``python -m app.main`` without installing).

- ``faceapp serve``: the web app under gunicorn, as ``make run`` starts it (one worker, threads);
- ``faceapp analyze PATH...``: the command-line analysis of ``app/cli.py`` (same as
  ``flask --app app analyze``);
- ``faceapp worker``: a Celery worker running video jobs when ``REDIS_URL`` is set (``app/video/worker.py``,
  same as ``flask --app app worker``).
"""
from __future__ import annotations

import os
import sys

import click
from flask.cli import ScriptInfo

from app import __version__
from app.config import ROOT, Config


def _check_checkout() -> None:
    """The app reads its weights, pages and npm libraries from the source tree: an editable install
    (``pip install -e .``) keeps it; a plain ``pip install .`` copies the Python files only."""
    if not (ROOT / "templates").is_dir() or not (ROOT / "wsgi.py").is_file():
        raise click.ClickException(
            f"faceapp runs from a source checkout, and {ROOT} is not one: in the cloned repository, "
            "install it with `pip install -e .`.")


def _create_app():
    from app import create_app

    _check_checkout()
    return create_app()


class _Commands(click.Group):
    """Imports ``analyze`` and ``worker`` (torch and the models' code) only when they run: the gunicorn
    master of ``serve`` then stays light, and starts listening sooner."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "analyze", "worker"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "analyze":
            from app.cli import analyze_command

            return analyze_command
        if name == "worker":
            from app.video.worker import worker_command

            return worker_command
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faceapp")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Face analysis: emotion, age and gender of every face in photos, videos and a webcam."""
    # analyze_command is a Flask command (@with_appcontext): it builds the app from this ScriptInfo.
    if ctx.obj is None:  # tests pass their own
        ctx.obj = ScriptInfo(create_app=_create_app, set_debug_flag=False, load_dotenv_defaults=False)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="127.0.0.1 or $HOST",
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=lambda: int(os.environ.get("PORT", "5000")),
              show_default="5000 or $PORT")
@click.option("--threads", type=click.IntRange(1), default=lambda: Config.THREADS,
              show_default="$THREADS, or MAX_SOCKET_CONNECTIONS + MAX_CONCURRENT_UPLOADS + 32: 352",
              help="Request threads; each socket connection and each upload being received holds one.")
@click.option("--timeout", type=click.IntRange(1), default=120, show_default=True,
              help="Seconds a request may run before gunicorn restarts the worker.")
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def serve(host: str, port: int, threads: int, timeout: int, gunicorn_args: tuple[str, ...]) -> None:
    """Serve the web app with gunicorn: one worker (one copy of the models) with threads.

    It stays in the foreground; Ctrl-C stops it. Until the models are loaded every request gets 503
    (the log then says "ready on http://HOST:PORT"). Arguments after `--` go to gunicorn as they are.
    """
    _check_checkout()
    from gunicorn.app.wsgiapp import run

    sys.argv = ["faceapp serve", "-w", "1", "--threads", str(threads), "-b", f"{host}:{port}",
                "--timeout", str(timeout), "-c", "python:app.gunicorn_hooks", "--chdir", str(ROOT),
                *gunicorn_args, "wsgi:app"]
    run()


if __name__ == "__main__":
    cli()
