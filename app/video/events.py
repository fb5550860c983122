"""Socket.IO namespace ``/videos``: progress pushed to the clients watching a job.

A client emits ``watch`` with a job id; it joins that job's room and gets the job's status as the
acknowledgement, then a ``progress`` event (the same status dict) after every chunk and at the end.
Polling ``GET /api/v1/videos/<id>`` gives the same information; this only saves the requests.
Any other argument is answered with an error acknowledgement, never a failed handler.
"""
from __future__ import annotations

from flask_socketio import ConnectionRefusedError, Namespace, join_room, leave_room

from app.errors import error_body
from app.security import UNAUTHORIZED, socket_allowed

NAMESPACE = "/videos"
EVENT = "progress"


def _job_id(args: tuple) -> str | None:
    """The one job id a well-behaved client sends; None for anything else."""
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


class VideoNamespace(Namespace):
    def on_connect(self, auth=None):
        if not socket_allowed(auth):
            raise ConnectionRefusedError(UNAUTHORIZED, {"code": "unauthorized"})

    def on_watch(self, *args):
        from app.video import get_queue, status_body  # here: app.video imports this module
        from app.video.store import QueueUnavailable

        job_id = _job_id(args)
        if job_id is None:
            return error_body("invalid_payload", "send one job id (a string) with 'watch'")
        try:
            job = get_queue().get(job_id)
            if job is None:
                return error_body("not_found", "no such video job")
            join_room(job.id, namespace=NAMESPACE)
            return status_body(job)
        except QueueUnavailable:
            return error_body("queue_unavailable", "the video queue is unavailable (Redis does not answer); "
                                                   "watch again in a few seconds")

    def on_unwatch(self, *args):
        job_id = _job_id(args)
        if job_id is None:
            return error_body("invalid_payload", "send one job id (a string) with 'unwatch'")
        leave_room(job_id, namespace=NAMESPACE)
        return {"ok": True}

