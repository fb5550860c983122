"""Every knob of the application, read from environment variables with safe defaults.

Each value gets its real type here, where it is read, so the rest of the code reads typed values.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY") or os.urandom(16).hex()

    # Inference service
    DEVICE = os.environ.get("FACEAPP_DEVICE", "auto")  # auto | cpu | cuda | cuda:N
    TORCH_THREADS = _int("FACEAPP_TORCH_THREADS", 0)  # 0: one per CPU core
    MAX_BATCH_SIZE = _int("FACEAPP_MAX_BATCH_SIZE", 32)
    # Longest a face waits for companions before its batch leaves. Unset: 5 ms with torch (a batch of 32
    # costs 0.2x the CPU per face of one alone), 0 with onnxruntime (0.7x: not worth making a lone
    # photo face wait; faces that arrive while a batch runs still leave together in the next one).
    MAX_WAIT_MS = _float("FACEAPP_MAX_WAIT_MS", -1.0)
    MAX_QUEUE = _int("FACEAPP_MAX_QUEUE", 1024)
    EMOTION_WEIGHTS = os.environ.get("FACEAPP_EMOTION_WEIGHTS", str(ROOT / "models" / "weights" / "emotion.pt"))
    AGE_GENDER_WEIGHTS = os.environ.get("FACEAPP_AGE_GENDER_WEIGHTS",
                                        str(ROOT / "models" / "weights" / "age_gender.pt"))
    # torch: the checkpoints in PyTorch; onnxruntime: their ONNX exports (python -m models.export), made
    # once per set of weights into ONNX_DIR, run by ONNX Runtime (its CUDA provider on a GPU when installed).
    # auto: onnxruntime on the CPU (a one-face photo 72 vs 123 ms p50, bench/backends.py), torch (fp16) on a GPU.
    INFERENCE_BACKEND = os.environ.get("INFERENCE_BACKEND", "auto").strip().lower()
    ONNX_DIR = os.environ.get("FACEAPP_ONNX_DIR", str(ROOT / "instance" / "onnx"))
    DETECTOR_MAX_SIDE = _int("FACEAPP_DETECTOR_MAX_SIDE", 1280)
    DETECTOR_MIN_FACE = _int("FACEAPP_DETECTOR_MIN_FACE", 20)
    # Smallest face a photo (API, CLI) is searched for, in its pixels: 24 costs 20% less detection CPU than
    # 20 on a 640x480 photo (bench/detector_cost.py) and still finds a 24-pixel face (tests/test_detector.py);
    # video and live frames keep DETECTOR_MIN_FACE (crowds in downscaled 1080p frames have smaller faces).
    PHOTO_MIN_FACE = _int("FACEAPP_PHOTO_MIN_FACE", 24)
    DETECTOR_MIN_SCORE = _float("FACEAPP_DETECTOR_MIN_SCORE", 0.9)
    # Seconds between giving the C heap's free memory back to the system while the service works
    # (app/heap.py: glibc otherwise keeps what freed frames and tensors leave in its arenas); 0: never.
    HEAP_TRIM_INTERVAL_S = _float("FACEAPP_HEAP_TRIM_INTERVAL_S", 10.0)
    # Seconds without inference work after which the service gives back what the peak left held: ONNX
    # Runtime's arenas (P-net's grows 0.4-0.5 GB with a batch of 8 large pictures), PyTorch's CUDA cache and
    # the C heap's free pages (app/heap.py: HeapTrimmer); 0: never. Not while working: they would only regrow.
    IDLE_RELEASE_S = _float("FACEAPP_IDLE_RELEASE_S", 2.0)
    # Bytes from which glibc gives a block a mapping of its own, unmapped when freed (app/heap.py); 0: glibc's
    # default, a threshold that rises to 32 MB after large frees, so frames and tensors grow the arenas.
    MALLOC_MMAP_THRESHOLD = _int("FACEAPP_MALLOC_MMAP_THRESHOLD", 131072)
    # ONNX Runtime's CPU memory arena keeps its high-water mark until IDLE_RELEASE_S shrinks it; off, every
    # run's buffers come from the C heap, and photo throughput fell 22% (README, Benchmarks, Memory): on.
    ORT_CPU_ARENA = os.environ.get("FACEAPP_ORT_CPU_ARENA", "1").strip().lower() not in ("0", "false", "no")

    # Uploads
    MAX_UPLOAD_MB = _float("MAX_UPLOAD_MB", 20.0)
    MAX_CONTENT_LENGTH = int(MAX_UPLOAD_MB * 1024 * 1024)
    MAX_IMAGE_PIXELS = _int("MAX_IMAGE_PIXELS", 40_000_000)
    MAX_IMAGES_PER_REQUEST = _int("MAX_IMAGES_PER_REQUEST", 16)
    # Larger photos are decoded reduced to this longest side (JPEG at a reduced DCT scale). Detection sees
    # at most DETECTOR_MAX_SIDE (1280) px, where the smallest face found is DETECTOR_MIN_FACE (20) px: at
    # 4096 px that face is still 64 px, the size the models read, so nothing they see is lost.
    DECODE_MAX_SIDE = _int("FACEAPP_DECODE_MAX_SIDE", 4096)
    # Full-size pixels of the photos decoded and analysed at once, all requests together; a photo that
    # does not fit waits up to PIXEL_BUDGET_WAIT_S, then gets 503 (app/budget.py).
    PIXEL_BUDGET = _int("FACEAPP_PIXEL_BUDGET", 120_000_000)
    PIXEL_BUDGET_WAIT_S = _float("FACEAPP_PIXEL_BUDGET_WAIT_S", 30.0)
    UPLOAD_FOLDER = os.environ.get("UPLOAD_FOLDER", str(ROOT / "instance" / "uploads"))

    # Front-end libraries installed from npm (package.json) into a git-ignored folder
    NODE_MODULES = os.environ.get("FACEAPP_NODE_MODULES", str(ROOT / "node_modules"))

    # Live mode (Socket.IO namespace /live)
    MAX_LIVE_CLIENTS = _int("MAX_LIVE_CLIENTS", 16)  # per server process; beyond it a "busy" refusal
    MAX_LIVE_FRAME_BYTES = _int("MAX_LIVE_FRAME_BYTES", 2 * 1024 * 1024)
    MAX_LIVE_FRAME_SIDE = _int("MAX_LIVE_FRAME_SIDE", 1280)  # pixels; the page sends at most 640
    LIVE_DEFAULT_ALPHA = _float("LIVE_DEFAULT_ALPHA", 0.3)  # weight of the newest frame in the averages
    LIVE_TRACK_MIN_IOU = _float("LIVE_TRACK_MIN_IOU", 0.3)
    LIVE_TRACK_MAX_AGE = _int("LIVE_TRACK_MAX_AGE", 5)  # frames a track survives without its face
    # Faces in a webcam frame are large: detecting on the frame downscaled to 320 px is 2.5x faster than
    # at 640 and finds the same boxes (tests/test_live.py); the heads still see crops of the full frame.
    LIVE_DETECTOR_MAX_SIDE = _int("FACEAPP_LIVE_DETECTOR_MAX_SIDE", 320)
    # A client's faces are searched for every n-th frame and followed by MTCNN's O-net in between
    # (app/inference/keyframes.py, as in video mode); a face that enters is found at most n - 1 frames late.
    LIVE_SEARCH_EVERY = _int("LIVE_SEARCH_EVERY", 3)

    # The door (app/security.py). API_KEYS: comma-separated keys, each at least 16 characters; unset, the
    # app is open. Rate limits are Flask-Limiter strings, counted per key (or per address without one).
    API_KEYS = os.environ.get("API_KEYS", "")
    RATELIMIT_ENABLED = os.environ.get("RATELIMIT_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off")
    # e.g. redis://host:6379/0. Unset: REDIS_URL when that is set (every web process counts together),
    # else memory:// (per process).
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "")
    RATE_LIMIT = os.environ.get("RATE_LIMIT", "600 per minute")  # every /api/v1 route, each counted apart
    UPLOAD_RATE_LIMIT = os.environ.get("UPLOAD_RATE_LIMIT", "120 per minute")  # POST images, POST videos
    LOGIN_RATE_LIMIT = os.environ.get("LOGIN_RATE_LIMIT", "10 per minute")
    SESSION_COOKIE_SAMESITE = "Strict"  # the login session never rides on another site's request
    SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "").strip().lower() in ("1", "true", "yes")

    # Connections (app/connections.py): gunicorn has a thread per request and a Socket.IO connection
    # holds one while it lives. The threads are sized for the sockets and uploads allowed, plus 32 that
    # answer /healthz, pages and quick calls whatever slow or idle clients do (an idle connection's blocked
    # threads cost ~0.2 MB: README, Benchmarks, Connections). One client address holds a share of each.
    MAX_SOCKET_CONNECTIONS = _int("MAX_SOCKET_CONNECTIONS", 256)  # every namespace, or none, together
    MAX_CONCURRENT_UPLOADS = _int("MAX_CONCURRENT_UPLOADS", 64)  # requests whose body is being received
    MAX_SOCKETS_PER_ADDRESS = _int("MAX_SOCKETS_PER_ADDRESS", 32)  # 0: no bound (behind a proxy: limit there)
    MAX_UPLOADS_PER_ADDRESS = _int("MAX_UPLOADS_PER_ADDRESS", 16)
    THREADS = _int("THREADS", MAX_SOCKET_CONNECTIONS + MAX_CONCURRENT_UPLOADS + 32)  # gunicorn's, one worker
    REQUEST_BODY_TIMEOUT_S = _float("REQUEST_BODY_TIMEOUT_S", 15.0)  # longest pause inside a request body
    SOCKET_JOIN_GRACE_S = _float("SOCKET_JOIN_GRACE_S", 10.0)  # a socket in no namespace after this is closed

    LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
    TESTING = False

    # Video mode (/video page, /api/v1/videos): jobs live in UPLOAD_FOLDER/videos/<id>/
    MAX_VIDEO_MB = _float("MAX_VIDEO_MB", 500.0)  # the video upload route's own request size limit
    MAX_VIDEO_SECONDS = _float("MAX_VIDEO_SECONDS", 600.0)
    MAX_VIDEO_SIDE = _int("MAX_VIDEO_SIDE", 4096)  # pixels, the longer side
    VIDEO_MAX_QUEUE = _int("VIDEO_MAX_QUEUE", 8)  # jobs waiting; beyond it uploads get 503
    VIDEO_WORKERS = _int("VIDEO_WORKERS", 1)  # jobs run at once (each already uses every core)
    VIDEO_TTL_HOURS = _float("VIDEO_TTL_HOURS", 24.0)  # finished jobs and their files are removed after
    VIDEO_DEFAULT_ALPHA = _float("VIDEO_DEFAULT_ALPHA", 0.3)
    # Full face search every n-th analysed frame, faces followed by MTCNN's O-net in between
    # (app/inference/keyframes.py); 1 searches every frame.
    VIDEO_SEARCH_EVERY = _int("VIDEO_SEARCH_EVERY", 5)
    # Where job folders live; unset: UPLOAD_FOLDER/videos. With REDIS_URL set, a volume every web process
    # and worker mounts at the same path (uploads are written by the web, outputs by the workers).
    VIDEO_DIR = os.environ.get("VIDEO_DIR", "")

    # Scale-out (README "Running at scale"). Unset: one process holds everything (video jobs on threads,
    # job state in job.json). Set (redis://host:6379/0): Socket.IO events go through Redis's pub/sub, video
    # jobs go to Celery workers (`faceapp worker`) through Redis, their state lives in Redis, and rate
    # limits are counted there unless RATELIMIT_STORAGE_URI says otherwise.
    REDIS_URL = os.environ.get("REDIS_URL", "").strip()
    REDIS_KEY_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "faceapp:")  # every key and channel starts with it
    # Socket.IO transports the pages use. A websocket stays on the process that accepted it, so behind a
    # load balancer the pages need no sticky sessions; long-polling's requests must all reach one process.
    # Comma-separated; unset: websocket only with REDIS_URL (several processes), else the client library's
    # default (long-polling first, then the upgrade to a websocket).
    SOCKETIO_TRANSPORTS = os.environ.get("SOCKETIO_TRANSPORTS", "")
    # Proxies in front that set X-Forwarded-For/-Proto (1 behind deploy/nginx.conf): the client's address,
    # which rate limits count by, is then read from that header. 0: the peer's address (no proxy).
    TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0)
    # A worker renews its lease on a running job every third of this; a job whose lease lapsed (its worker
    # was killed) is queued again, up to VIDEO_MAX_ATTEMPTS runs in all, then fails with the reason.
    VIDEO_LEASE_S = _float("VIDEO_LEASE_S", 30.0)
    VIDEO_MAX_ATTEMPTS = _int("VIDEO_MAX_ATTEMPTS", 2)
    # Celery on Redis redelivers a message not acknowledged after this long (acks_late: a job is
    # acknowledged when it ends). Longer than the longest job (600 s of 4K video runs well under an hour on
    # a CPU), else a running job would be delivered twice (the lease turns the second delivery away anyway).
    VIDEO_VISIBILITY_TIMEOUT_S = _float("VIDEO_VISIBILITY_TIMEOUT_S", 4 * 3600.0)
