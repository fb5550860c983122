"""The one inference service of a process: detector + emotion and age/gender heads, loaded once.

Photo, video, live, the CLI and the benchmarks all go through :meth:`InferenceService.analyze`, so
device choice, batching and preprocessing live here and nowhere else.

Flow for one picture: detect (MTCNN on one worker thread: on 2 CPU cores two pyramids at once only
thrash; pictures that arrive while it is busy are detected together in its next call) -> align each
face into each head's training frame -> submit each face to the micro-batcher, which runs both heads
on faces gathered from all concurrent callers -> typed :class:`Analysis`.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from app.heap import HeapTrimmer, release_free_memory, set_mmap_threshold
from app.inference import PHOTO, SOURCE_WEIGHTS
from app.inference.batching import MicroBatcher
from app.inference.explain import (Explanation, crop_matrix, heat_from_drops, heat_on_box, occlusion_batch,
                                   render_png)
from app.inference.quality import assess
from app.inference.results import Age, Analysis, Emotion, Face, FacePrediction, Gender, age_group
from models.age_gender import decode_age_gender
from models.checkpoint import LoadedModel, load_checkpoint
from models.layers import fuse_conv_bn
from models.detector import Detection, FaceDetector
from models.emotion import decode_emotion
from models.preprocess import align_face, resize_face, to_tensor

log = logging.getLogger(__name__)

# Most pictures per MTCNN call. Same-sized pictures (live and video frames) go through MTCNN as one
# batch: on the 2-core CPU, 8 live frames cost 1.4x less each than one at a time, and 8 live clients
# get 1.8x the frames/s they got when detection took one picture at a time (bench/live_clients.py).
DETECT_BATCH_SIZE = 8
FOLLOW_BATCH_SIZE = 32  # pictures per O-net call when following (48x48 crops: cheap even together)

BACKENDS = ("torch", "onnxruntime")
# How long a face waits for companions when FACEAPP_MAX_WAIT_MS is unset. Heads' CPU time per face at
# batch 32 vs alone (bench/detector_cost.py, 2 cores): torch 2.7 vs 12.2 ms, onnxruntime 2.4 vs 3.2 ms;
# so with onnxruntime a lone photo face does not wait (faces queued while a batch runs still leave together).
DEFAULT_MAX_WAIT_MS = {"torch": 5.0, "onnxruntime": 0.0}


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when there is one, else the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use FACEAPP_DEVICE=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu or cuda[:N]")
    return device


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> onnxruntime on the CPU (the faster there: bench/backends.py), torch on a GPU (fp16)."""
    if name == "auto":
        return "onnxruntime" if device.type == "cpu" else "torch"
    return name


def reading_order(detections: list[Detection]) -> list[Detection]:
    """Top-to-bottom rows, left to right within a row, so that face #n in a crowd is easy to find.
    A face joins the current row when its centre is within half a (median) face height of the row's."""
    if len(detections) < 2:
        return list(detections)
    heights = sorted(float(d.box[3] - d.box[1]) for d in detections)
    tolerance = heights[len(heights) // 2] / 2
    rows: list[list[Detection]] = []
    for d in sorted(detections, key=lambda d: float(d.box[1] + d.box[3])):
        cy = float(d.box[1] + d.box[3]) / 2
        if rows and cy - float(rows[-1][0].box[1] + rows[-1][0].box[3]) / 2 <= tolerance:
            rows[-1].append(d)
        else:
            rows.append([d])
    return [d for row in rows for d in sorted(row, key=lambda d: float(d.box[0]))]


def _face(detection: Detection, prediction: FacePrediction, job: "_FaceJob") -> Face:
    box = tuple(float(v) for v in detection.box)
    return Face(box=box, score=detection.score, landmarks=[(float(x), float(y)) for x, y in detection.landmarks],
                emotion=prediction.emotion, age=prediction.age, gender=prediction.gender,
                quality=assess(box, detection.score, detection.landmarks, job.age_gender_crop))


@dataclass(frozen=True)
class _DetectRequest:
    """One picture for the detector worker: a full search."""

    image: np.ndarray
    max_side: int | None = None
    min_face: int | None = None


@dataclass(frozen=True)
class _FollowRequest:
    """One picture for the follower: faces known from the previous frame, found again near ``around``."""

    image: np.ndarray
    around: np.ndarray  # (N, 4) boxes


@dataclass
class _FaceJob:
    """One face to run through the heads: its crop for each head."""

    emotion_crop: np.ndarray
    age_gender_crop: np.ndarray


@dataclass(frozen=True)
class PendingFaces:
    """Faces of several pictures queued for the heads (:meth:`InferenceService.submit_faces`)."""

    detections: Sequence[Sequence[Detection]]
    jobs: list[_FaceJob]
    futures: list[Future]

    def result(self) -> list[list[Face]]:
        """Per picture, its faces, waiting for the heads as needed; raises what the heads raised."""
        answers = iter(zip([f.result() for f in self.futures], self.jobs))
        return [[_face(d, *next(answers)) for d in found] for found in self.detections]


@dataclass(frozen=True)
class ServiceSettings:
    emotion_weights: str
    age_gender_weights: str
    device: str = "auto"
    torch_threads: int = 0
    max_batch_size: int = 32
    max_wait_ms: float = -1.0  # < 0: the backend's default (DEFAULT_MAX_WAIT_MS)
    max_queue: int = 1024
    detector_max_side: int = 1280
    detector_min_face: int = 20
    photo_min_face: int = 24
    detector_min_score: float = 0.9
    backend: str = "auto"  # auto | torch | onnxruntime
    onnx_dir: str = "instance/onnx"
    heap_trim_interval_s: float = 10.0  # app/heap.py: HeapTrimmer; 0 = off
    idle_release_s: float = 2.0  # release_memory() after this long without work; 0 = never
    malloc_mmap_threshold: int = 131072  # app/heap.py: set_mmap_threshold; 0 = glibc's default
    ort_cpu_arena: bool = True  # ONNX Runtime's CPU memory arena (models/onnx_backend.py: make_session)

    @classmethod
    def from_config(cls, config) -> "ServiceSettings":
        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        return cls(
            emotion_weights=str(get("EMOTION_WEIGHTS")),
            age_gender_weights=str(get("AGE_GENDER_WEIGHTS")),
            device=get("DEVICE"),
            torch_threads=int(get("TORCH_THREADS")),
            max_batch_size=int(get("MAX_BATCH_SIZE")),
            max_wait_ms=float(get("MAX_WAIT_MS")),
            max_queue=int(get("MAX_QUEUE")),
            detector_max_side=int(get("DETECTOR_MAX_SIDE")),
            detector_min_face=int(get("DETECTOR_MIN_FACE")),
            photo_min_face=int(get("PHOTO_MIN_FACE")),
            detector_min_score=float(get("DETECTOR_MIN_SCORE")),
            backend=str(get("INFERENCE_BACKEND")),
            onnx_dir=str(get("ONNX_DIR")),
            heap_trim_interval_s=float(get("HEAP_TRIM_INTERVAL_S")),
            idle_release_s=float(get("IDLE_RELEASE_S")),
            malloc_mmap_threshold=int(get("MALLOC_MMAP_THRESHOLD")),
            ort_cpu_arena=bool(get("ORT_CPU_ARENA")),
        )


class InferenceService:
    """Loads the detector and the heads once and serves every mode.

    Thread-safe: any number of threads may call :meth:`analyze` at once.
    Raises ``models.checkpoint.CheckpointError`` at construction when a weight file is missing or
    corrupt, so a server never starts with random weights.
    """

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        if settings.backend not in BACKENDS + ("auto",):
            raise ValueError(f"INFERENCE_BACKEND must be auto, {' or '.join(BACKENDS)}, not {settings.backend!r}")
        # Before the models load: large blocks (frames, crops, tensors) get mappings of their own, given
        # back when freed, instead of growing glibc's arenas (app/heap.py).
        set_mmap_threshold(settings.malloc_mmap_threshold)
        self.device = resolve_device(settings.device)
        self.backend = resolve_backend(settings.backend, self.device)
        self.half = self.device.type == "cuda" and self.backend == "torch"
        self.max_wait_ms = settings.max_wait_ms if settings.max_wait_ms >= 0 else DEFAULT_MAX_WAIT_MS[self.backend]
        # CPU threads: the networks' runtime gets the cores. With onnxruntime, torch does only small glue
        # (tensor stacking, NMS) and one thread: its idle OpenMP workers otherwise spin on the cores
        # ONNX Runtime is using (bench/detector_cost.py: a 640x480 detection, 84 -> 62 ms of CPU).
        self.compute_threads = settings.torch_threads or os.cpu_count() or 1
        self.torch_threads = 1 if self.backend == "onnxruntime" else self.compute_threads
        if self.device.type == "cpu":
            torch.set_num_threads(self.torch_threads)
        # OpenCV without its own thread pool: with it, every thread that calls OpenCV keeps ~0.9 KB after
        # it ends, and Socket.IO handles each live frame on a new thread: 54 frames a second under
        # bench/soak.py crept RSS ~3 MB a minute (tests/test_memory.py). The service's threads already
        # run requests side by side, and its images are small.
        cv2.setNumThreads(1)
        self.emotion = self._load(settings.emotion_weights, "emotion")
        self.age_gender = self._load(settings.age_gender_weights, "age_gender")
        self.detector = FaceDetector(device=self.device, min_face_size=settings.detector_min_face,
                                     max_side=settings.detector_max_side, min_score=settings.detector_min_score)
        if self.backend == "onnxruntime":
            self._use_onnxruntime()
        # No waiting for companions (max_wait_ms=0): a lone picture is detected at once; under load,
        # pictures queue while a batch runs and leave together in the next one. One source per search
        # batch: a video's search does not wait for the live searches batched with it.
        self._detector: MicroBatcher[_DetectRequest, list[Detection]] = MicroBatcher(
            self._detect_batch, max_batch_size=DETECT_BATCH_SIZE, max_wait_ms=0, max_queue=settings.max_queue,
            name="detector", mix_sources=False, weights=SOURCE_WEIGHTS)
        # Following (O-net alone, a few ms) has its own worker: a video job follows its faces frame by
        # frame, one call after the other, and behind whole-picture searches (~100 ms a batch under
        # 16 live clients) each call waited that long (bench/soak.py).
        self._follower: MicroBatcher[_FollowRequest, list[Detection]] = MicroBatcher(
            self._follow_batch, max_batch_size=FOLLOW_BATCH_SIZE, max_wait_ms=0, max_queue=settings.max_queue,
            name="follower", weights=SOURCE_WEIGHTS)
        # The heads mix sources: a fuller batch is cheaper per face.
        self._batcher: MicroBatcher[_FaceJob, FacePrediction] = MicroBatcher(
            self._predict_batch, max_batch_size=settings.max_batch_size, max_wait_ms=self.max_wait_ms,
            max_queue=settings.max_queue, name="face-heads", weights=SOURCE_WEIGHTS)
        # What the arenas free still stays resident until trimmed: give it back while the service works,
        # and what the pools hold once it stops.
        self._heap_trimmer = HeapTrimmer(self._items_served, settings.heap_trim_interval_s,
                                         when_idle=self.release_memory, idle_after_s=settings.idle_release_s)
        self.ready = False
        self._warm_up()
        self.ready = True

    @classmethod
    def from_config(cls, config) -> "InferenceService":
        return cls(ServiceSettings.from_config(config))

    # -- loading --------------------------------------------------------------------------------
    def _load(self, path: str, task: str) -> LoadedModel:
        loaded = load_checkpoint(path, task=task)
        if self.backend == "onnxruntime":
            return loaded  # its network is replaced by the ONNX export (_use_onnxruntime)
        # BatchNorm folded into the convolutions: same outputs, fewer passes over the activations.
        model = fuse_conv_bn(loaded.model).to(self.device)
        # channels_last: ~1.6x faster convolutions on this CPU (bench/), and the fast layout on GPUs.
        model = model.to(memory_format=torch.channels_last)
        if self.half:
            model = model.half()
        loaded.model = model
        log.info("loaded %s model %s (%s) on %s", task, path, loaded.card.arch, self.device)
        return loaded

    def _use_onnxruntime(self) -> None:
        """Swap every network for its ONNX export run by ONNX Runtime; the checkpoints still supply the
        cards (preprocessing, labels)."""
        from models.mtcnn_pipeline import PNET_WINDOW
        from models.onnx_backend import OrtModule, exported_models, make_session

        paths = exported_models(self.settings.onnx_dir, self.settings.emotion_weights,
                                self.settings.age_gender_weights)
        threads = self.compute_threads if self.device.type == "cpu" else 0
        session = lambda name: make_session(paths[name], self.device, threads,  # noqa: E731
                                            cpu_arena=self.settings.ort_cpu_arena)
        self.emotion.model = OrtModule(session("emotion"), outputs=["logits"])
        self.age_gender.model = OrtModule(session("age_gender"), outputs=["outputs"])
        self.detector.use_networks(OrtModule(session("mtcnn_pnet"), smallest_side=PNET_WINDOW),
                                   OrtModule(session("mtcnn_rnet")), OrtModule(session("mtcnn_onet")))
        log.info("onnxruntime backend: %s (%s)", paths["emotion"].parent,
                 self.emotion.model.session.get_providers()[0])

    def _warm_up(self) -> None:
        """First calls allocate and pick kernels; pay that before the server reports ready."""
        blank = np.full((240, 320, 3), 127, dtype=np.uint8)
        self.detect(blank)
        job = self._job_from_crop(blank)
        for _ in range(2):
            self._batcher.submit(job, PHOTO).result()

    # -- public API -----------------------------------------------------------------------------
    @property
    def device_description(self) -> str:
        if self.backend == "onnxruntime":
            provider = self.emotion.model.session.get_providers()[0]
            threads = f", {self.compute_threads} threads" if provider == "CPUExecutionProvider" else ""
            return f"{self.device} (onnxruntime {provider}{threads}, fp32)"
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)}, fp16)"
        return f"cpu ({self.compute_threads} threads, fp32)"

    def describe_models(self) -> dict:
        """What the API reports under "models"."""
        return {
            "emotion": self.emotion.card.summary(),
            "age_gender": self.age_gender.card.summary(),
            "detector": {"arch": "mtcnn", "package": "facenet-pytorch", "max_side": self.detector.max_side,
                         "min_face": self.detector.min_face_size, "photo_min_face": self.settings.photo_min_face,
                         "min_score": self.detector.min_score},
        }

    def detect(self, image: np.ndarray, max_side: int | None = None, min_face: int | None = None,
               source: str = PHOTO) -> list[Detection]:
        """Faces in one picture, best first; ``max_side`` overrides the detector's downscaling limit,
        ``min_face`` its smallest face (pixels of the picture searched). ``source``, here and below: whose
        share of the service the work counts against (``app.inference``'s PHOTO, LIVE or VIDEO)."""
        return self._detector.submit(_DetectRequest(image, max_side, min_face), source).result()

    def detect_many(self, images: list[np.ndarray], max_side: int | None = None,
                    source: str = PHOTO) -> list[list[Detection]]:
        return [f.result() for f in self.submit_searches(images, max_side, source)]

    def submit_searches(self, images: Sequence[np.ndarray], max_side: int | None = None,
                        source: str = PHOTO) -> list[Future]:
        """:meth:`detect_many` without waiting: one Future per picture, resolving to its detections
        (a video job searches its next chunk while it finishes this one)."""
        return self._detector.submit_many([_DetectRequest(image, max_side) for image in images], source)

    def follow(self, image: np.ndarray, previous: Sequence[Detection], source: str = PHOTO) -> list[Detection]:
        """The faces of ``previous`` (the last frame's detections) where they are in ``image`` now,
        by MTCNN's last stage alone: one 48x48 pass per face instead of a whole-picture search. Finds no
        new faces; video mode runs a full :meth:`detect` every few frames for those."""
        if not previous:
            return []
        boxes = np.stack([d.box for d in previous])
        return self._follower.submit(_FollowRequest(image, boxes), source).result()

    def analyze(self, image: np.ndarray, detect: bool = True) -> Analysis:
        """Analyse one RGB uint8 picture.

        Args:
            image: (H, W, 3) uint8, RGB.
            detect: when False the whole picture is taken as one face, already cropped.
        """
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        timings: dict[str, float] = {}
        if detect:
            detections = reading_order(self.detect(image, min_face=self.settings.photo_min_face))
        else:
            detections = []
        t1 = time.perf_counter()
        timings["detect"] = (t1 - t0) * 1000
        if detect:
            faces = self.analyze_detections(image, detections, timings)
        else:
            pred = self._batcher.submit(self._job_from_crop(image), PHOTO).result()
            t2 = time.perf_counter()
            timings["align"] = 0.0
            timings["models"] = (t2 - t1) * 1000
            faces = [Face(box=(0.0, 0.0, float(w), float(h)), score=1.0, landmarks=[], emotion=pred.emotion,
                          age=pred.age, gender=pred.gender)]  # a given crop: no quality to judge
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Analysis(width=w, height=h, faces=faces, timings_ms=timings)

    def analyze_detections(self, image: np.ndarray, detections: Sequence[Detection],
                           timings: dict[str, float] | None = None, source: str = PHOTO) -> list[Face]:
        """Run the heads on faces already found in ``image`` (video and live reuse detections)."""
        t0 = time.perf_counter()
        jobs = [self._job_from_landmarks(image, d.landmarks) for d in detections]
        t1 = time.perf_counter()
        preds = [f.result() for f in self._batcher.submit_many(jobs, source)]
        t2 = time.perf_counter()
        if timings is not None:
            timings["align"] = (t1 - t0) * 1000
            timings["models"] = (t2 - t1) * 1000
        return [_face(d, p, j) for d, p, j in zip(detections, preds, jobs)]

    def analyze_many(self, images: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]],
                     source: str = PHOTO) -> list[list[Face]]:
        """The heads on the faces of several pictures (a chunk of video frames): every face is
        submitted before any answer is awaited, so faces of different frames share batches."""
        return self.submit_faces(images, detections, source).result()

    def submit_faces(self, images: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]],
                     source: str = PHOTO) -> PendingFaces:
        """:meth:`analyze_many` without waiting: the faces are aligned and queued for the heads now."""
        jobs = [self._job_from_landmarks(image, d.landmarks)
                for image, found in zip(images, detections) for d in found]
        return PendingFaces(detections, jobs, self._batcher.submit_many(jobs, source))

    def explain(self, image: np.ndarray, face: Face) -> Explanation:
        """Occlusion sensitivity of ``face``'s emotion label (app/inference/explain.py), mapped onto its box.
        Runs the emotion model directly (one batch per face), not through the micro-batcher: an
        explanation is an on-demand extra, not the traffic the batcher shapes."""
        cfg = self.emotion.card.preprocess
        landmarks = np.asarray(face.landmarks, np.float32) if face.landmarks else None
        crop = (align_face(image, landmarks, cfg) if landmarks is not None else resize_face(image, cfg))
        batch, patches = occlusion_batch(crop)
        with torch.inference_mode():
            probs = decode_emotion(self._run_head(self.emotion, list(batch))).cpu().numpy()
        label = int(probs[0].argmax())
        drops = probs[0, label] - probs[1:, label]
        heat = heat_on_box(heat_from_drops(crop.shape[0], patches, drops), crop_matrix(image.shape, landmarks, cfg),
                           face.box)
        return Explanation(method="occlusion", label=self.emotion.card.labels["emotion"][label], box=face.box,
                           width=heat.shape[1], height=heat.shape[0], peak_drop=float(max(drops.max(), 0.0)),
                           png=render_png(heat))

    def release_memory(self) -> None:
        """Gives back what peaks of work left held: the free regions of ONNX Runtime's CPU arenas (each
        keeps its high-water mark), PyTorch's cached CUDA blocks, and the C heap's free pages. Safe while
        work runs (what is in use is kept), but meant for quiet spells (HeapTrimmer): busy, the pools
        would only grow again."""
        if self.backend == "onnxruntime":
            for network in (self.emotion.model, self.age_gender.model, *self.detector.networks):
                network.release_arena()
        elif self.device.type == "cuda":
            torch.cuda.empty_cache()
        release_free_memory()

    def close(self) -> None:
        self._heap_trimmer.close()
        self._detector.close()
        self._follower.close()
        self._batcher.close()

    def _items_served(self) -> int:
        return sum(b.stats.items for b in (self._detector, self._follower, self._batcher))

    @property
    def batch_stats(self):
        return self._batcher.stats

    # -- internals ------------------------------------------------------------------------------
    def _detect_batch(self, requests: list[_DetectRequest]) -> list[list[Detection]]:
        """One MTCNN call per downscaling limit and smallest face asked for (live frames and photos ask
        for their own)."""
        results: list[list[Detection]] = [[] for _ in requests]
        groups: dict[tuple[int | None, int | None], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.max_side, request.min_face), []).append(i)
        for (max_side, min_face), indices in groups.items():
            found = self.detector.detect_many([requests[i].image for i in indices], max_side, min_face)
            for i, detections in zip(indices, found):
                results[i] = detections
        return results

    def _follow_batch(self, requests: list[_FollowRequest]) -> list[list[Detection]]:
        """One O-net call for every face of every picture in the batch."""
        return self.detector.refine_many([r.image for r in requests], [r.around for r in requests])

    def _job_from_landmarks(self, image: np.ndarray, landmarks: np.ndarray) -> _FaceJob:
        return _FaceJob(emotion_crop=align_face(image, landmarks, self.emotion.card.preprocess),
                        age_gender_crop=align_face(image, landmarks, self.age_gender.card.preprocess))

    def _job_from_crop(self, image: np.ndarray) -> _FaceJob:
        return _FaceJob(emotion_crop=resize_face(image, self.emotion.card.preprocess),
                        age_gender_crop=resize_face(image, self.age_gender.card.preprocess))

    def _run_head(self, head: LoadedModel, crops: list[np.ndarray]) -> torch.Tensor:
        x = to_tensor(crops, head.card.preprocess)
        if self.backend == "onnxruntime":
            return head.model(x)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.half:
            x = x.half()
        return head.model(x)

    @torch.inference_mode()
    def _predict_batch(self, jobs: list[_FaceJob]) -> list[FacePrediction]:
        emotion_probs = decode_emotion(self._run_head(self.emotion, [j.emotion_crop for j in jobs])).cpu().numpy()
        ag = decode_age_gender(self._run_head(self.age_gender, [j.age_gender_crop for j in jobs]))
        age_mean, age_std, p_female = (t.cpu().numpy() for t in (ag.age_mean, ag.age_std, ag.p_female))
        classes = self.emotion.card.labels["emotion"]
        out = []
        for i in range(len(jobs)):
            probs = {c: float(p) for c, p in zip(classes, emotion_probs[i])}
            years = float(age_mean[i])
            out.append(FacePrediction(
                emotion=Emotion(label=classes[int(emotion_probs[i].argmax())], probabilities=probs),
                age=Age(years=years, std=float(age_std[i]), group=age_group(years)),
                gender=Gender.from_p_female(float(p_female[i])),
            ))
        return out
