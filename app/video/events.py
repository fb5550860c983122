"""Socket.IO namespace ``/videos``: progress pushed to the clients watching a job.

A client emits ``watch`` with a job id; it joins that job's room and gets the job's status as the
acknowledgement, then a ``progress`` event (the same status dict) after every chunk and at the end.
Polling ``GET /api/v1/videos/<id>`` gives the same information; this only saves the requests.
"""
from __future__ import annotations

from flask_socketio import Namespace, join_room, leave_room

from app.errors import error_body

NAMESPACE = "/videos"
EVENT = "progress"


class VideoNamespace(Namespace):
    def on_watch(self, job_id):
        from app.video import get_queue, status_body  # here: app.video imports this module

        job = get_queue().get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return error_body("not_found", "no such video job")
        join_room(job.id, namespace=NAMESPACE)
        return status_body(job)

    def on_unwatch(self, job_id):
        if isinstance(job_id, str):
            leave_room(job_id, namespace=NAMESPACE)
        return {"ok": True}
