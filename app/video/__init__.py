"""Video mode: the /video page, the /api/v1/videos endpoints, and the per-app job queue."""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

from flask import Blueprint, Flask, current_app, render_template, request, send_file, url_for
from flask_socketio import SocketIO

from app.errors import bad_request, error_response, socket_error
from app.security import current_key_id
from app.video.events import EVENT, NAMESPACE, VideoNamespace
from app.video.jobs import DONE, OUTPUTS, QUEUED, JobQueue, QueueFull, VideoJob, VideoOptions, VideoQueue
from app.video.probe import VideoError, probe
from app.video.processing import process_video
from app.video.store import QueueUnavailable

page_bp = Blueprint("video", __name__)
api_bp = Blueprint("video_api", __name__)

_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".ogv"}
_queue_lock = threading.Lock()
DELETE_TOKEN_HEADER = "X-Delete-Token"


def video_root(config) -> Path:
    """Where job folders live: VIDEO_DIR, else UPLOAD_FOLDER/videos."""
    return Path(config["VIDEO_DIR"] or Path(config["UPLOAD_FOLDER"]) / "videos")


def get_queue() -> VideoQueue:
    """This app's job queue, built on first use (so building an app starts no thread): threads in this
    process, or Celery workers when REDIS_URL is set."""
    app = current_app._get_current_object()
    with _queue_lock:
        jobs = app.extensions.get("video_jobs")
        if jobs is None:
            on_progress = _pusher(app.extensions.get("video_socketio_server"))
            if app.config["REDIS_URL"]:
                from app.video.distributed import CeleryJobQueue

                jobs = CeleryJobQueue.from_config(app.config, video_root(app.config), on_progress)
            else:
                service = app.extensions["inference"]
                jobs = JobQueue(video_root(app.config),
                                runner=lambda job, cancelled, report: process_video(job, service, cancelled, report),
                                max_queue=app.config["VIDEO_MAX_QUEUE"], workers=app.config["VIDEO_WORKERS"],
                                ttl_hours=app.config["VIDEO_TTL_HOURS"], on_progress=on_progress)
            app.extensions["video_jobs"] = jobs
    return jobs


def _pusher(server):
    """Progress callback: the job's status to its Socket.IO room (no-op without a server)."""
    def push(job: VideoJob) -> None:
        if server is not None:
            server.emit(EVENT, job.to_dict(), to=job.id, namespace=NAMESPACE)
    return push


def status_body(job: VideoJob) -> dict:
    """What GET /api/v1/videos/<id> answers (and ``watch`` acknowledges)."""
    body = job.to_dict()
    body["queue_position"] = get_queue().position(job.id) if job.status == QUEUED else None
    body["urls"] = _urls(job.id)
    return body


@page_bp.get("/video")
def page():
    return render_template("video.html", default_alpha=current_app.config["VIDEO_DEFAULT_ALPHA"],
                           default_search_every=current_app.config["VIDEO_SEARCH_EVERY"],
                           max_video_mb=current_app.config["MAX_VIDEO_MB"],
                           max_video_seconds=current_app.config["MAX_VIDEO_SECONDS"])


@api_bp.before_request
def allow_large_uploads():
    # The app-wide MAX_CONTENT_LENGTH is sized for photos; only this blueprint takes videos.
    request.max_content_length = int(current_app.config["MAX_VIDEO_MB"] * 1024 * 1024)


def _urls(job_id: str) -> dict:
    urls = {"status": url_for("video_api.status", job_id=job_id)}
    for name in OUTPUTS:
        urls[name.replace(".", "_")] = url_for("video_api.output", job_id=job_id, name=name)
    return urls


# Form values as the OpenAPI document types them: plain ASCII digits, no spaces, signs or other scripts'
# digits (Python's int() and float() take ' 5 ', '+5' and Arabic-Indic '٣').
_INTEGER = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"(?:[0-9]{1,9}(?:\.[0-9]{0,17})?|\.[0-9]{1,17})(?:[eE][-+]?[0-9]{1,3})?")


def _parse_options() -> VideoOptions | str:
    """Form fields -> options, or the message of a 400."""
    config = current_app.config
    form = request.form
    stride = form.get("stride", "1")
    search_every = form.get("search_every", str(config["VIDEO_SEARCH_EVERY"]))
    alpha = form.get("alpha", str(config["VIDEO_DEFAULT_ALPHA"]))
    if not (_INTEGER.fullmatch(stride) and _INTEGER.fullmatch(search_every) and _NUMBER.fullmatch(alpha)):
        return "'stride' and 'search_every' must be integers and 'alpha' a number (plain ASCII digits)"
    stride, search_every, alpha = int(stride), int(search_every), float(alpha)
    if not 1 <= stride <= 30:
        return "'stride' must be between 1 and 30"
    if not 1 <= search_every <= 30:
        return "'search_every' must be between 1 and 30"
    if not 0.0 < alpha <= 1.0:
        return "'alpha' must be in (0, 1]"
    return VideoOptions(stride=stride, alpha=alpha, search_every=search_every)


@api_bp.post("")
def create():
    upload = request.files.get("video")  # may raise 413, answered as JSON
    if upload is None:
        return bad_request("send the video as multipart/form-data in a field named 'video'", "missing_video")
    options = _parse_options()
    if isinstance(options, str):
        return bad_request(options, "bad_option")
    suffix = Path(upload.filename or "").suffix.lower()
    jobs = get_queue()
    job = jobs.new_job(upload.filename or "video", options, suffix if suffix in _SUFFIXES else ".bin")
    delete_token = job.new_delete_token()
    job.owner = current_key_id()
    try:
        upload.save(job.input_path)
        config = current_app.config
        info = probe(job.input_path, config["MAX_VIDEO_SECONDS"], config["MAX_VIDEO_SIDE"])
        job.frames_total = info.frames
        jobs.submit(job)
    except VideoError as exc:
        jobs.delete(job.id)
        return error_response(exc.status, exc.message, exc.code)
    except QueueFull:
        jobs.delete(job.id)
        return error_response(503, "too many videos are waiting; try again later", "busy", {"Retry-After": "30"})
    except QueueUnavailable:
        _delete_quietly(jobs, job.id)
        return queue_unavailable(None)
    except BaseException:
        jobs.delete(job.id)  # e.g. a full disk: leave no half-made job behind
        raise
    body = {"id": job.id, "status": job.status, "urls": _urls(job.id), "delete_token": delete_token}
    return body, 202, {"Location": body["urls"]["status"]}


def _delete_quietly(jobs: VideoQueue, job_id: str) -> None:
    """Removes what a refused upload left (its folder; its state too if Redis answers again)."""
    try:
        jobs.delete(job_id)
    except QueueUnavailable:
        shutil.rmtree(video_root(current_app.config) / job_id, ignore_errors=True)


@api_bp.errorhandler(QueueUnavailable)
def queue_unavailable(_exc):
    """Redis does not answer (REDIS_URL mode): video jobs can be neither queued nor read until it is back;
    photos and live frames do not need it and go on."""
    return error_response(503, "the video queue is unavailable (its Redis server does not answer); "
                               "try again in a few seconds", "queue_unavailable", {"Retry-After": "5"})


def _job_or_404(job_id: str) -> VideoJob | None:
    return get_queue().get(job_id)


@api_bp.get("/<job_id>")
def status(job_id: str):
    job = _job_or_404(job_id)
    if job is None:
        return error_response(404, "no such video job", "not_found")
    return status_body(job)


@api_bp.delete("/<job_id>")
def delete(job_id: str):
    """Only by its creator: the ``delete_token`` of the upload's answer in ``X-Delete-Token``, or the
    API key that uploaded it."""
    job = _job_or_404(job_id)
    if job is None:
        return error_response(404, "no such video job", "not_found")
    if not job.may_delete(request.headers.get(DELETE_TOKEN_HEADER), current_key_id()):
        return error_response(403, f"only the job's creator may delete it: send the upload's delete_token in "
                                   f"{DELETE_TOKEN_HEADER}", "forbidden")
    if not get_queue().delete(job_id):
        return error_response(404, "no such video job", "not_found")
    return "", 204


def _finished_file(job_id: str, path_in_job: str):
    job = _job_or_404(job_id)
    if job is None:
        return None, error_response(404, "no such video job", "not_found")
    if job.status != DONE:
        return None, error_response(409, f"the job is {job.status}; its files exist once it is done", "not_ready")
    path = job.path / path_in_job
    if not path.is_file():
        return None, error_response(404, "no such file", "not_found")
    return path, None


@api_bp.get("/<job_id>/<name>")
def output(job_id: str, name: str):
    if name not in OUTPUTS:
        return error_response(404, "no such file", "not_found")
    path, error = _finished_file(job_id, name)
    if error is not None:
        return error
    mimetype = {"annotated.mp4": "video/mp4", "frames.jsonl": "application/jsonl", "frames.csv": "text/csv",
                "summary.json": "application/json"}[name]
    # conditional=True: Range requests, so players can seek in the mp4.
    return send_file(path, mimetype=mimetype, conditional=True, max_age=0,
                     as_attachment=request.args.get("download") == "1", download_name=name)


@api_bp.get("/<job_id>/tracks/<int:track_id>.jpg")
def thumbnail(job_id: str, track_id: int):
    path, error = _finished_file(job_id, f"tracks/{track_id}.jpg")
    return error if error is not None else send_file(path, mimetype="image/jpeg", max_age=0)


def init_app(app: Flask, socketio: SocketIO) -> None:
    """Adds the page, the API and the ``/videos`` namespace; call after ``socketio.init_app(app)``,
    whose fresh server for this app is the one progress is pushed through (see app/live)."""
    app.register_blueprint(page_bp)
    app.register_blueprint(api_bp, url_prefix="/api/v1/videos")
    app.extensions["video_socketio_server"] = socketio.server
    socketio.on_namespace(VideoNamespace(NAMESPACE))
    socketio.on_error(NAMESPACE)(socket_error)
    with app.app_context():
        get_queue()  # now, not at the first request: jobs a previous run left unfinished start again
