"""Video mode: upload -> job -> annotated H.264 + JSONL/CSV/summary, validation, deletion, restarts."""
from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from app import create_app
from app.video.jobs import FAILED, RUNNING, JobCancelled, JobQueue, QueueFull, VideoJob
from helpers import TestConfig
from video_clips import decode_all, moving_face_frames, write_clip

JOB_TIMEOUT_S = 120


@pytest.fixture
def video_config(tmp_path):
    class VideoConfig(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")

    return VideoConfig


@pytest.fixture
def video_client(service, video_config):
    return create_app(video_config, service=service).test_client()


@pytest.fixture(scope="module")
def clip(astronaut, tmp_path_factory) -> Path:
    """24 frames, 320x240, 12 fps: one face moving left to right."""
    return write_clip(tmp_path_factory.mktemp("clips") / "face.mp4", moving_face_frames(astronaut))


@pytest.fixture(scope="module")
def done_job(service, astronaut, tmp_path_factory, clip):
    """One clip processed to the end, shared by the tests that read its outputs."""
    class Config(TestConfig):
        UPLOAD_FOLDER = str(tmp_path_factory.mktemp("uploads"))

    client = create_app(Config, service=service).test_client()
    response = post_video(client, clip.read_bytes(), "face.mp4")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    status = wait_done(client, body["id"])
    return client, body, status


def post_video(client, data: bytes, name: str, **form):
    return client.post("/api/v1/videos", data={"video": (io.BytesIO(data), name), **form},
                       content_type="multipart/form-data")


def delete_video(client, created: dict):
    """DELETE as the job's creator: with the token its upload answered."""
    return client.delete(f"/api/v1/videos/{created['id']}", headers={"X-Delete-Token": created["delete_token"]})


def wait_done(client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/videos/{job_id}").get_json()
        if status["status"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT_S} s")


def read_jsonl(client, job_id: str) -> list[dict]:
    response = client.get(f"/api/v1/videos/{job_id}/frames.jsonl")
    assert response.status_code == 200
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_upload_processes_to_an_annotated_h264_of_the_same_shape(done_job, tmp_path):
    client, body, status = done_job
    assert body["status"] == "queued" and set(body["urls"]) >= {"status", "annotated_mp4", "frames_jsonl"}
    assert status["status"] == "done", status
    assert status["progress"] == 1.0 and status["frames_done"] == status["frames_total"] == 24
    assert status["created"] <= status["started"] <= status["updated"]  # its run's time: updated - started

    response = client.get(body["urls"]["annotated_mp4"])
    assert response.status_code == 200 and response.mimetype == "video/mp4"
    out = tmp_path / "annotated.mp4"
    out.write_bytes(response.data)
    codec, frames = decode_all(out)
    assert codec == "h264"
    assert len(frames) == 24 and frames[0].shape == (240, 320, 3)


def test_annotated_video_supports_range_requests(done_job):
    client, body, _ = done_job
    response = client.get(body["urls"]["annotated_mp4"], headers={"Range": "bytes=0-99"})
    assert response.status_code == 206 and len(response.data) == 100


def test_one_track_persists_and_smoothing_steadies_age(done_job):
    client, body, _ = done_job
    frames = read_jsonl(client, body["id"])
    assert [f["frame"] for f in frames] == list(range(24))
    track_ids = {face["track_id"] for f in frames for face in f["faces"]}
    assert track_ids == {1}, track_ids
    with_face = [f for f in frames if f["faces"]]
    assert len(with_face) >= 20
    face = with_face[0]["faces"][0]
    assert set(face["raw"]) == {"emotion", "age", "gender"} and "probabilities" in face["raw"]["emotion"]

    smoothed = np.array([f["faces"][0]["age"]["years"] for f in with_face])
    raw = np.array([f["faces"][0]["raw"]["age"]["years"] for f in with_face])
    assert np.var(np.diff(smoothed)) < np.var(np.diff(raw))
    # Age converges: the track's uncertainty shrinks as its frames arrive; each frame keeps its quality.
    stds = [f["faces"][0]["age"]["std"] for f in with_face]
    assert stds[-1] < stds[0]
    assert 0 < face["quality"]["weight"] <= 1


def test_csv_summary_and_thumbnail(done_job):
    client, body, _ = done_job
    csv_text = client.get(body["urls"]["frames_csv"]).get_data(as_text=True).splitlines()
    assert csv_text[0].startswith("frame,time_s,analysed,track_id") and len(csv_text) >= 21
    summary = client.get(body["urls"]["summary_json"]).get_json()
    assert summary["frames"] == 24 and len(summary["tracks"]) == 1
    # Default options: a full search on frames 0, 5, 10, 15, 20; the face is followed in between.
    assert summary["search_every"] == 5 and summary["searched_frames"] == 5
    track = summary["tracks"][0]
    assert track["track_id"] == 1 and track["first_frame"] <= 2 and track["last_frame"] >= 21
    assert track["emotion"]["dominant"] in track["emotion"]["mean_probabilities"]
    assert 0 < track["age"]["mean"] < 100 and track["age"]["std"] >= 0
    assert track["gender"]["label"] in ("female", "male")
    assert 0 < len(track["timeline"]) <= 200
    thumb = client.get(f"/api/v1/videos/{body['id']}/tracks/1.jpg")
    assert thumb.status_code == 200 and thumb.data[:3] == b"\xff\xd8\xff"


def test_odd_sizes_are_padded_and_said_so(video_client, astronaut, tmp_path):
    # H.264 in 4:2:0 cannot hold 161x121: the input is lossless FFV1 in Matroska, which can.
    frames = [f[:121, :161] for f in moving_face_frames(astronaut, frames=4)]
    path = tmp_path / "odd.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = 161, 121, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    job_id = post_video(video_client, path.read_bytes(), "odd.mkv").get_json()["id"]
    status = wait_done(video_client, job_id)
    assert status["status"] == "done", status
    assert any("161x121 to 162x122" in note for note in status["notes"])
    out = tmp_path / "out.mp4"
    out.write_bytes(video_client.get(f"/api/v1/videos/{job_id}/annotated.mp4").data)
    codec, decoded = decode_all(out)
    assert codec == "h264" and len(decoded) == 4 and decoded[0].shape == (122, 162, 3)


def test_outputs_are_409_until_done_and_404_for_unknown(video_client, clip):
    assert video_client.get("/api/v1/videos/" + "0" * 32).status_code == 404
    assert video_client.get("/api/v1/videos/not-an-id").status_code == 404
    job_id = post_video(video_client, clip.read_bytes(), "face.mp4").get_json()["id"]
    # Straight after the upload the job is queued or running: its files are not there yet.
    early = video_client.get(f"/api/v1/videos/{job_id}/summary.json")
    if early.status_code != 200:
        assert early.status_code == 409 and early.get_json()["error"]["code"] == "not_ready"
    wait_done(video_client, job_id)


def test_delete_cancels_and_removes_files(video_client, video_config, clip):
    created = post_video(video_client, clip.read_bytes(), "face.mp4").get_json()
    job_id = created["id"]
    folder = Path(video_config.UPLOAD_FOLDER) / "videos" / job_id
    assert folder.is_dir()
    assert delete_video(video_client, created).status_code == 204
    assert not folder.exists()
    assert video_client.get(f"/api/v1/videos/{job_id}").status_code == 404
    assert delete_video(video_client, created).status_code == 404
    time.sleep(0.5)  # a running job stops at its next chunk and must not recreate the folder
    assert not folder.exists()


@pytest.mark.parametrize("data, name, status, code", [
    (b"just some text\n" * 10, "notes.txt", 415, "unsupported_media_type"),
    (b"", "empty.mp4", 400, "empty_file"),
])
def test_bad_files_are_rejected(video_client, data, name, status, code):
    response = post_video(video_client, data, name)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_truncated_mp4_is_rejected(video_client, astronaut, tmp_path):
    # Without faststart the index sits at the end: cut it off and the file cannot be opened.
    path = write_clip(tmp_path / "slow.mp4", moving_face_frames(astronaut, frames=12), faststart=False)
    data = path.read_bytes()
    response = post_video(video_client, data[: len(data) // 2], "cut.mp4")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "corrupt_video"


def test_truncated_mid_file_fails_the_job_with_a_reason(video_client, astronaut, tmp_path):
    # With faststart the index comes first: the file opens, and breaks only where the data stops.
    path = write_clip(tmp_path / "fast.mp4", moving_face_frames(astronaut, frames=48))
    data = path.read_bytes()
    response = post_video(video_client, data[: len(data) * 2 // 3], "cut.mp4")
    assert response.status_code == 202
    status = wait_done(video_client, response.get_json()["id"])
    assert status["status"] == "failed" and "could not be decoded after frame" in status["error"]
    assert status["eta_s"] is None


def test_missing_field_and_bad_options(video_client, clip):
    response = video_client.post("/api/v1/videos", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "missing_video"
    for bad in ({"alpha": "2"}, {"stride": "0"}, {"search_every": "0"}, {"search_every": "31"},
                {"search_every": "often"}):
        response = post_video(video_client, clip.read_bytes(), "face.mp4", **bad)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_option", bad


def test_limits_on_size_duration_and_resolution(service, tmp_path, clip):
    class Small(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        MAX_VIDEO_MB = 0.001
        MAX_UPLOAD_MB = 0.0001  # the video route must use its own limit, not this one

    response = post_video(create_app(Small, service=service).test_client(), clip.read_bytes(), "face.mp4")
    assert response.status_code == 413
    assert "0.001 MB" in response.get_json()["error"]["message"]

    class Short(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        MAX_VIDEO_SECONDS = 1.0

    response = post_video(create_app(Short, service=service).test_client(), clip.read_bytes(), "face.mp4")
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "video_too_long"

    class Narrow(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        MAX_VIDEO_SIDE = 300

    response = post_video(create_app(Narrow, service=service).test_client(), clip.read_bytes(), "face.mp4")
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "resolution_too_large"


def test_photo_uploads_keep_their_own_limit(service, tmp_path, clip):
    class Small(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        MAX_UPLOAD_MB = 0.001
        MAX_CONTENT_LENGTH = 1024

    client = create_app(Small, service=service).test_client()
    response = client.post("/api/v1/images", data={"image": (io.BytesIO(b"x" * 4096), "a.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 413


def wait_for(jobs: JobQueue, job_id: str, statuses=("done", "failed", "cancelled"), timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while (job := jobs.get(job_id)) is not None and job.status not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.status}"
        time.sleep(0.02)
    return job


def test_restart_runs_queued_jobs_and_starts_running_ones_over(tmp_path):
    """A new process queues again what the last one left: running (starts over) and queued jobs, in the
    order they were created; a job whose input is gone fails with the reason."""
    root = tmp_path / "videos"
    jobs_on_disk = []
    for i, (status, has_input) in enumerate([(RUNNING, True), ("queued", True), ("queued", False)]):
        job = VideoJob(id=f"{i}" * 32, folder=str(root / (f"{i}" * 32)), status=status, created=1000.0 + i,
                       frames_done=5 if status == RUNNING else 0, progress=0.5 if status == RUNNING else 0.0)
        job.path.mkdir(parents=True)
        if has_input:
            job.input_path.write_bytes(b"video")
        job.save()
        jobs_on_disk.append(job)
    ran = []

    def runner(job, cancelled, report):
        assert job.input_path.read_bytes() == b"video" and job.frames_done == 0
        ran.append(job.id)
        (job.path / "summary.json").write_text("{}")

    jobs = JobQueue(root, runner=runner)
    running, queued, lost = jobs_on_disk
    assert wait_for(jobs, running.id).status == "done" and wait_for(jobs, queued.id).status == "done"
    assert ran == [running.id, queued.id]
    assert any("started over" in note for note in jobs.get(running.id).notes)
    assert jobs.get(lost.id).status == FAILED and "input" in jobs.get(lost.id).error


def test_a_restarted_app_runs_the_jobs_it_finds(service, video_config, clip):
    """Through create_app: the job queue is built with the app, so recovered jobs start without a request."""
    root = Path(video_config.UPLOAD_FOLDER) / "videos"
    job = JobQueue(root, runner=lambda *args: None).new_job("face.mp4", jobs_options())
    job.input_path.write_bytes(clip.read_bytes())
    job.frames_total = 24
    job.save()
    app = create_app(video_config, service=service)
    jobs = app.extensions["video_jobs"]
    assert wait_for(jobs, job.id, timeout_s=JOB_TIMEOUT_S).status == "done"
    assert (job.path / "summary.json").is_file()


def test_deleted_queued_jobs_free_their_slots(tmp_path):
    import threading

    release = threading.Event()
    jobs = JobQueue(tmp_path / "videos", runner=lambda job, cancelled, report: release.wait(10), max_queue=2)
    try:
        first = jobs.new_job("x.mp4", jobs_options())
        jobs.submit(first)
        wait_for(jobs, first.id, statuses=("running",))
        waiting = [jobs.new_job("x.mp4", jobs_options()) for _ in range(2)]
        for job in waiting:
            jobs.submit(job)
        with pytest.raises(QueueFull):
            jobs.submit(jobs.new_job("x.mp4", jobs_options()))
        for job in waiting:
            assert jobs.delete(job.id)
        for _ in range(2):  # both slots are free again while the first job still runs
            jobs.submit(jobs.new_job("x.mp4", jobs_options()))
        assert jobs.get(first.id).status == RUNNING
    finally:
        release.set()


def test_deleted_jobs_leave_no_mark_behind(tmp_path):
    """Deleting waiting, running and finished jobs keeps no per-job state once they are gone (the
    cancellation marks used to pile up, one per deleted job, for the life of the process)."""
    import threading

    started, release = threading.Event(), threading.Event()

    def runner(job, cancelled, report):
        started.set()
        while not cancelled() and not release.wait(0.02):
            pass

    jobs = JobQueue(tmp_path / "videos", runner=runner, max_queue=4)
    try:
        finished = jobs.new_job("x.mp4", jobs_options())
        release.set()
        jobs.submit(finished)
        assert wait_for(jobs, finished.id).status == "done"
        release.clear()
        started.clear()
        running = jobs.new_job("x.mp4", jobs_options())
        jobs.submit(running)
        assert started.wait(10)
        waiting = jobs.new_job("x.mp4", jobs_options())
        jobs.submit(waiting)
        for job in (finished, waiting, running):
            assert jobs.delete(job.id)
        deadline = time.monotonic() + 10
        while jobs._cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not jobs._cancelled and not jobs._waiting
    finally:
        release.set()


def test_inputs_are_deleted_when_jobs_end_and_outputs_kept(tmp_path):
    def runner(job, cancelled, report):
        (job.path / "summary.json").write_text("{}")
        if job.original_filename == "bad.mp4":
            raise ValueError("the video could not be decoded after frame 3")

    jobs = JobQueue(tmp_path / "videos", runner=runner)
    for name, status in (("good.mp4", "done"), ("bad.mp4", "failed")):
        job = jobs.new_job(name, jobs_options())
        job.input_path.write_bytes(b"video")
        jobs.submit(job)
        assert wait_for(jobs, job.id).status == status
        assert not job.input_path.exists() and (job.path / "summary.json").is_file()


def test_deleting_a_running_job_is_not_logged_as_a_failure(tmp_path, caplog):
    import threading

    started, deleted = threading.Event(), threading.Event()

    def runner(job, cancelled, report):
        started.set()
        deleted.wait(10)
        job.input_path.read_bytes()  # gone with its folder: FileNotFoundError, as a decoder would hit

    jobs = JobQueue(tmp_path / "videos", runner=runner)
    job = jobs.new_job("x.mp4", jobs_options())
    job.input_path.write_bytes(b"video")
    with caplog.at_level(logging.INFO, logger="app.video.jobs"):
        jobs.submit(job)
        assert started.wait(10)
        assert jobs.delete(job.id)
        deleted.set()
        deadline = time.monotonic() + 10
        while "cancelled" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert f"video job {job.id} cancelled" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not job.path.exists()


def test_failures_during_processing_end_the_job_with_a_reason(tmp_path):
    def broken(job, cancelled, report):
        raise ValueError("the video could not be decoded after frame 7")

    jobs = JobQueue(tmp_path / "videos", runner=broken)
    job = jobs.new_job("x.mp4", jobs_options())
    jobs.submit(job)
    deadline = time.monotonic() + 10
    while jobs.get(job.id).status not in ("failed", "done") and time.monotonic() < deadline:
        time.sleep(0.02)
    failed = jobs.get(job.id)
    assert failed.status == FAILED and "frame 7" in failed.error


def test_files_written_while_a_delete_runs_are_removed_too(tmp_path):
    import threading

    started, deleted, stopped = threading.Event(), threading.Event(), threading.Event()

    def slow_writer(job, cancelled, report):
        started.set()
        deleted.wait(10)
        job.path.mkdir(exist_ok=True)  # a write that lands after delete()'s rmtree
        (job.path / "frames.jsonl").write_text("{}\n")
        stopped.set()
        raise JobCancelled()

    jobs = JobQueue(tmp_path / "videos", runner=slow_writer)
    job = jobs.new_job("x.mp4", jobs_options())
    jobs.submit(job)
    assert started.wait(10)
    assert jobs.delete(job.id)
    deleted.set()
    assert stopped.wait(10)
    deadline = time.monotonic() + 10
    while job.path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not job.path.exists()


def test_full_queue_answers_503(service, video_config, clip, tmp_path):
    class Tiny(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        VIDEO_MAX_QUEUE = 1

    client = create_app(Tiny, service=service).test_client()
    responses = [post_video(client, clip.read_bytes(), "face.mp4") for _ in range(3)]
    codes = [r.status_code for r in responses]
    # The worker takes the first at once; the second waits; the third finds the queue full.
    assert 503 in codes and codes[0] == 202, codes
    for response in responses:
        if response.status_code == 202:
            delete_video(client, response.get_json())  # stop the work the test no longer needs


def test_ttl_cleanup_removes_old_finished_jobs(tmp_path):
    jobs = JobQueue(tmp_path / "videos", runner=lambda *args: None, ttl_hours=1)
    job = jobs.new_job("x.mp4", jobs_options())
    job.status = "done"
    job.save()
    assert jobs.cleanup(now=time.time() + 600) == 0
    assert jobs.cleanup(now=time.time() + 7200) == 1
    assert not job.path.exists()


def jobs_options():
    from app.video.jobs import VideoOptions

    return VideoOptions()


def test_progress_is_pushed_to_watchers(service, video_config, clip):
    from app import socketio
    from app.video.events import NAMESPACE

    app = create_app(video_config, service=service)
    sio = socketio.test_client(app, namespace=NAMESPACE)
    assert sio.emit("watch", "0" * 32, callback=True, namespace=NAMESPACE)["error"]["code"] == "not_found"
    client = app.test_client()
    job_id = post_video(client, clip.read_bytes(), "face.mp4").get_json()["id"]
    ack = sio.emit("watch", job_id, callback=True, namespace=NAMESPACE)
    assert ack["id"] == job_id and ack["status"] in ("queued", "running", "done")
    wait_done(client, job_id)
    time.sleep(0.2)
    events = [e for e in sio.get_received(NAMESPACE) if e["name"] == "progress"]
    if ack["status"] != "done":  # watched in time to hear about it
        assert events and events[-1]["args"][0]["status"] == "done"
        assert all(e["args"][0]["id"] == job_id for e in events)
    sio.disconnect(namespace=NAMESPACE)


def test_track_summary_memory_is_bounded_and_its_figures_exact():
    """A long track keeps at most 2 * TIMELINE_POINTS timeline points, yet its means are over every frame;
    its age and gender are the track's combined estimate after the last frame (what ``smoothed`` says)."""
    from app.tracking import TrackedFace
    from app.video.processing import TIMELINE_POINTS, TrackStats
    from test_tracking import make_face

    rng = np.random.default_rng(0)
    n = 30_000  # ~17 minutes at 30 fps, one face analysed per frame
    years, p_female = rng.uniform(20, 40, n), rng.uniform(0.2, 0.9, n)
    stats, image = TrackStats(track_id=1, first_frame=0), np.zeros((8, 8, 3), np.uint8)
    for i in range(n):
        face = make_face(box=(1, 1, 6, 6), happy=0.6, years=float(years[i]), p_female=float(p_female[i]))
        stats.add(i, i / 30, image, TrackedFace(track_id=1, raw=face, smoothed=face))
        assert len(stats.timeline) < 2 * TIMELINE_POINTS
    d = stats.to_dict()
    assert d["frames_analysed"] == n and (d["first_frame"], d["last_frame"]) == (0, n - 1)
    last = face.age
    assert d["age"] == {"mean": round(last.years, 1), "std": round(last.std, 1), "group": last.group,
                        "spread": round(float(years.std()), 1)}
    assert d["gender"]["label"] == face.gender.label and d["gender"]["probability"] == round(face.gender.probability, 4)
    assert d["gender"]["female_frames"] == int((p_female >= 0.5).sum())
    assert d["gender"]["male_frames"] == n - d["gender"]["female_frames"]
    assert d["emotion"]["dominant"] == "happy" and d["emotion"]["mean_probabilities"]["happy"] == pytest.approx(0.6)
    frames = [p["frame"] for p in d["timeline"]]
    assert len(frames) == TIMELINE_POINTS and frames[0] == 0 and frames[-1] == n - 1  # whole track, evenly
    gaps = np.diff(frames)[:-1]  # the last gap reaches the newest frame, whatever the stride
    assert gaps.max() <= 2 * gaps.min()


def test_an_unknown_codec_tag_is_a_clear_415(video_client, clip):
    """One byte changed in the sample description (avc1 -> cvc1): FFmpeg opens the file but has no
    decoder for the stream (PyAV's codec_context is None); this was a 500."""
    data = clip.read_bytes()
    at = data.rfind(b"avc1")
    assert at > data.find(b"ftyp") + 16  # the stsd entry, not a brand in the ftyp box
    response = post_video(video_client, data[:at] + b"cvc1" + data[at + 4:], "face.mp4")
    assert response.status_code == 415, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "unsupported_codec"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_still_images_are_not_videos(video_client, astronaut, fmt):
    from helpers import encode

    response = post_video(video_client, encode(astronaut, fmt), f"photo.{fmt.lower()}")
    assert response.status_code == 415, response.get_json()
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_watch_with_bad_arguments_answers_an_error_ack(service, video_config):
    from app import socketio
    from app.video.events import NAMESPACE

    app = create_app(video_config, service=service)
    sio = socketio.test_client(app, namespace=NAMESPACE)
    for event in ("watch", "unwatch"):
        for args in ((), (None,), (7,), (1.5,), (True,), ({"id": "x"},), ([1, 2],), (b"\x00" * 32,),
                     ("a" * 32, "b")):
            ack = sio.emit(event, *args, callback=True, namespace=NAMESPACE)
            assert ack["error"]["code"] == "invalid_payload", (event, args, ack)
    assert sio.is_connected(NAMESPACE)
    sio.disconnect(namespace=NAMESPACE)


def test_a_failing_videos_handler_answers_an_error(service, video_config, clip, monkeypatch):
    import app.video as video
    from app import socketio
    from app.video.events import NAMESPACE

    app = create_app(video_config, service=service)
    created = post_video(app.test_client(), clip.read_bytes(), "face.mp4").get_json()
    job_id = created["id"]

    def broken(job):
        raise RuntimeError("status failed")

    monkeypatch.setattr(video, "status_body", broken)
    sio = socketio.test_client(app, namespace=NAMESPACE)
    ack = sio.emit("watch", job_id, callback=True, namespace=NAMESPACE)
    assert ack["error"]["code"] == "internal_error" and "status failed" not in ack["error"]["message"]
    errors = [e["args"][0] for e in sio.get_received(NAMESPACE) if e["name"] == "error"]
    assert errors and errors[0]["error"]["code"] == "internal_error"
    assert sio.is_connected(NAMESPACE)
    sio.disconnect(namespace=NAMESPACE)
    monkeypatch.undo()
    delete_video(app.test_client(), created)


@pytest.mark.parametrize("field, value", [
    ("stride", "٣"), ("stride", " 5 "), ("stride", "+5"), ("stride", "5.0"), ("stride", "0x5"),
    ("search_every", "٣"), ("search_every", " 5 "), ("search_every", "5\n"), ("search_every", "²"),
    ("alpha", "٠.٥"), ("alpha", " 0.5"), ("alpha", "nan"), ("alpha", "inf"), ("alpha", "0"), ("alpha", "-0.5"),
])
def test_options_take_plain_ascii_numbers_only(video_client, clip, field, value):
    response = post_video(video_client, clip.read_bytes(), "face.mp4", **{field: value})
    assert response.status_code == 400, (field, value, response.get_json())
    assert response.get_json()["error"]["code"] == "bad_option"


def test_the_openapi_alpha_range_is_the_servers(video_client, clip):
    """alpha is in (0, 1] on both sides: the spec excludes 0 (the server refuses it) and allows 1."""
    import yaml

    spec = yaml.safe_load(video_client.get("/api/v1/openapi.yaml").data)
    schema = spec["paths"]["/api/v1/videos"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    alpha = schema["properties"]["alpha"]
    assert (alpha["minimum"], alpha.get("exclusiveMinimum"), alpha["maximum"]) == (0, True, 1)
    for value, status in (("0", 400), ("1", 202), ("1e-3", 202), (".5", 202), ("1.0000001", 400)):
        response = post_video(video_client, clip.read_bytes(), "face.mp4", alpha=value)
        assert response.status_code == status, (value, response.get_json())
        if status == 202:
            delete_video(video_client, response.get_json())


def test_video_work_counts_against_the_video_share_of_every_worker(video_client, service, clip, monkeypatch):
    """The service's workers share their time between photo, live and video (app/inference/batching.py):
    a job's searches, following and heads are submitted as video work."""
    from app.inference import VIDEO

    kinds = []
    for batcher in (service._detector, service._follower, service._batcher):
        submit = batcher.submit
        monkeypatch.setattr(batcher, "submit", lambda item, source="default", submit=submit, name=batcher._thread.name:
                            kinds.append((name, source)) or submit(item, source))
    response = post_video(video_client, clip.read_bytes(), "face.mp4")
    assert wait_done(video_client, response.get_json()["id"])["status"] == "done"
    assert set(kinds) == {("detector", VIDEO), ("follower", VIDEO), ("face-heads", VIDEO)}


class RecordingService:
    """The real service, noting when a job queues searches and when it waits for faces."""

    def __init__(self, service):
        self.service, self.events, self.futures = service, [], []

    def __getattr__(self, name):
        return getattr(self.service, name)

    def submit_searches(self, images, max_side=None, source="photo"):
        self.events.append(("search", len(images)))
        futures = self.service.submit_searches(images, max_side, source)
        self.futures += futures
        return futures

    def submit_faces(self, images, detections, source="photo"):
        pending = self.service.submit_faces(images, detections, source)
        self.futures += pending.futures
        events = self.events

        class Noted:
            futures = pending.futures

            def result(self):
                events.append(("faces", len(images)))
                return pending.result()

        return Noted()


def run_process_video(service, clip, folder, cancel_after=None, chunk_frames=8):
    from app.video.jobs import VideoOptions
    from app.video.processing import process_video

    folder.mkdir()
    (folder / "input.mp4").write_bytes(clip.read_bytes())
    job = VideoJob(id=folder.name, folder=str(folder), options=VideoOptions(search_every=5))
    reports = []
    process_video(job, service, lambda: cancel_after is not None and len(reports) >= cancel_after, reports.append,
                  chunk_frames=chunk_frames)
    return job, [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]


def test_a_job_searches_its_next_chunks_before_it_waits_for_faces(service, clip, tmp_path):
    """The pipeline (app/video/processing.py): the searches of chunks 2 and 3 are queued before the faces
    of chunk 1 are awaited, and the frames come out as with one chunk at a time."""
    recording = RecordingService(service)
    job, frames = run_process_video(recording, clip, tmp_path / "piped", chunk_frames=4)
    assert job.frames_total == 24
    first_wait = recording.events.index(("faces", 4))
    assert [e for e in recording.events[:first_wait] if e[0] == "search"] == [("search", 1)] * 3
    assert len([e for e in recording.events if e[0] == "faces"]) == 6  # every chunk's faces, each once
    _, alone = run_process_video(service, clip, tmp_path / "one-frame-chunks", chunk_frames=1)
    assert [f["frame"] for f in frames] == list(range(24)) == [f["frame"] for f in alone]
    for piped, single in zip(frames, alone):
        assert len(piped["faces"]) == len(single["faces"]) == 1
        assert np.allclose(piped["faces"][0]["box"], single["faces"][0]["box"], atol=0.5)
        assert piped["faces"][0]["emotion"]["label"] == single["faces"][0]["emotion"]["label"]


class LazyFuture(Future):
    """Work that runs when its result is first asked for, unless it was cancelled before."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def result(self, timeout=None):
        if not self.done() and self.set_running_or_notify_cancel():
            self.set_result(self.compute())
        return super().result(timeout)


class LazyService(RecordingService):
    """The real service, but what a job queues runs only when the job waits for it."""

    def submit_searches(self, images, max_side=None, source="photo"):
        futures = [LazyFuture(lambda im=im: self.service.detect_many([im], max_side, source)[0]) for im in images]
        self.futures += futures
        return futures

    def submit_faces(self, images, detections, source="photo"):
        from app.inference.service import PendingFaces

        jobs = [self.service._job_from_landmarks(image, d.landmarks)
                for image, found in zip(images, detections) for d in found]
        futures = [LazyFuture(lambda j=j: self.service._batcher.submit(j, source).result()) for j in jobs]
        self.futures += futures
        return PendingFaces(detections, jobs, futures)


def test_a_cancelled_job_leaves_no_work_queued(service, clip, tmp_path):
    """Cancelled after its first chunk is written, a job drops the searches of chunk 3 and the faces of
    chunk 2 that it had queued."""
    lazy = LazyService(service)
    with pytest.raises(JobCancelled):
        run_process_video(lazy, clip, tmp_path / "cancelled", cancel_after=1, chunk_frames=4)
    cancelled = [f for f in lazy.futures if f.cancelled()]
    assert len(cancelled) == 1 + 4  # chunk 3's one searched frame, chunk 2's four faces
    assert all(f.cancelled() or f.done() for f in lazy.futures)


@pytest.mark.parametrize("width,height,stride,expected", [
    (320, 240, 1, 16), (1280, 720, 1, 16), (1920, 1080, 1, 12), (3840, 2160, 1, 3), (1920, 1080, 5, 2),
    (4096, 4096, 3, 1)])
def test_chunks_shrink_so_that_large_frames_do_not_pile_up(width, height, stride, expected):
    from app.video.processing import HELD_PIXELS, chunk_size

    assert chunk_size(width, height, stride) == expected
    assert 3 * expected * stride * width * height <= HELD_PIXELS or expected == 1
