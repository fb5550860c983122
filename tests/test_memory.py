"""Memory bounded by design: large photos decoded reduced (boxes still in their own pixels), a pixel
budget shared by concurrent requests (wait, then 503), and free heap memory given back after peaks.
Peak and idle RSS under 16 concurrent 40 Mpx uploads are measured by bench/memory_uploads.py."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import app.budget as budget_module
from app import create_app
from app.budget import BudgetExceeded, PixelBudget, release_free_memory
from app.imaging import decode_image, image_pixels
from helpers import ASTRONAUT_FACE, TestConfig, box_iou, encode, upload


def one_bit_png(side: int) -> bytes:
    """The attacker's picture: a few KB of PNG, side x side pixels of one bit."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_pictures_decode_reduced(astronaut, fmt):
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    decoded = decode_image(encode(big, fmt), max_pixels=40_000_000, max_side=700)
    assert max(decoded.pixels.shape[:2]) <= 700 and decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height) == (2048, 2048)
    assert decoded.scale[0] == pytest.approx(2048 / decoded.pixels.shape[1])
    small = decode_image(encode(astronaut, fmt), max_pixels=40_000_000, max_side=700)
    assert small.pixels.shape == (512, 512, 3) and small.scale == (1.0, 1.0)


def test_a_one_bit_bomb_decodes_small():
    decoded = decode_image(one_bit_png(6300), max_pixels=40_000_000, max_side=4096)
    assert decoded.pixels.shape == (4096, 4096, 3) and (decoded.width, decoded.height) == (6300, 6300)
    assert image_pixels(one_bit_png(100), 10**6) == 100 * 100


def test_exif_rotated_large_jpeg_reports_its_oriented_size(astronaut):
    big = cv2.resize(astronaut, (1600, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter turn
    decoded = decode_image(encode(big, "JPEG", exif=exif.tobytes()), max_pixels=10**8, max_side=800)
    assert (decoded.width, decoded.height) == (1200, 1600)
    assert decoded.pixels.shape[0] > decoded.pixels.shape[1]


def test_boxes_of_a_reduced_photo_are_in_its_own_pixels(service, astronaut):
    class Reduced(TestConfig):
        DECODE_MAX_SIDE = 600

    client = create_app(Reduced, service=service).test_client()
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    r = client.post("/api/v1/images", data={"image": upload(encode(big), "big.jpg")})
    assert r.status_code == 200
    image = r.json["images"][0]
    assert (image["width"], image["height"]) == (1536, 1536)
    (face,) = image["faces"]
    assert box_iou(face["box"], [v * 3 for v in ASTRONAUT_FACE]) > 0.6, face["box"]
    assert all(0 <= x <= 1536 and 0 <= y <= 1536 for x, y in face["landmarks"])


def test_the_budget_makes_requests_wait_then_refuses():
    budget = PixelBudget(100, wait_s=5)
    entered, leave = threading.Event(), threading.Event()

    def second_request():
        with budget.reserve(60):
            entered.set()
            leave.wait(5)

    with budget.reserve(60):
        waiter = threading.Thread(target=second_request)
        waiter.start()
        assert not entered.wait(0.2) and budget.in_use == 60  # waiting: 60 + 60 is over the budget
    assert entered.wait(5) and budget.in_use == 60
    leave.set()
    waiter.join(5)
    assert budget.in_use == 0
    impatient = PixelBudget(100, wait_s=0.05)
    with impatient.reserve(100), pytest.raises(BudgetExceeded):
        with impatient.reserve(1):
            pass
    with impatient.reserve(10**9):  # larger than the budget: fits alone, as the whole budget
        assert impatient.in_use == 100


def test_a_busy_budget_answers_503(service, astronaut):
    class Tight(TestConfig):
        PIXEL_BUDGET = 1_000_000
        PIXEL_BUDGET_WAIT_S = 0.1

    app = create_app(Tight, service=service)
    client = app.test_client()
    with app.extensions["pixel_budget"].reserve(1_000_000):
        r = client.post("/api/v1/images", data={"image": upload(encode(astronaut))})
    assert r.status_code == 503 and r.json["error"]["code"] == "busy" and r.headers["Retry-After"] == "1"
    assert client.post("/api/v1/images", data={"image": upload(encode(astronaut))}).status_code == 200


def test_free_memory_goes_back_after_large_pictures(monkeypatch):
    assert release_free_memory()  # glibc's malloc_trim is there (Linux)
    calls = []
    monkeypatch.setattr(budget_module, "release_free_memory", lambda: calls.append(1) or True)
    budget = PixelBudget(100_000_000, trim_after_pixels=8_000_000)
    for _ in range(3):
        with budget.reserve(1_000_000):  # small pictures: no trim yet
            pass
    assert calls == []
    with budget.reserve(40_000_000):
        with budget.reserve(1_000):
            pass
        assert calls == []  # not while a picture is still held
    assert calls == [1]


def test_the_heap_is_trimmed_while_the_service_works_and_left_alone_when_idle(monkeypatch):
    from app import heap

    work = [0]
    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1) or True)
    trimmer = heap.HeapTrimmer(lambda: work[0], interval_s=0)  # 0: no thread; rounds driven by hand
    assert not trimmer.running
    assert trimmer.trim_if_busy() and calls == [1]  # the first round trims
    assert not trimmer.trim_if_busy() and calls == [1]  # nothing done since: idle, left alone
    work[0] += 5
    assert trimmer.trim_if_busy() and trimmer.trims == 2
    with pytest.raises(ValueError):
        heap.HeapTrimmer(lambda: 0, interval_s=-1)


def test_pools_are_given_back_once_per_quiet_spell_and_never_while_working():
    from app import heap

    work, released = [0], []
    trimmer = heap.HeapTrimmer(lambda: work[0], interval_s=0, when_idle=lambda: released.append(1),
                               idle_after_s=2.0, start=False)
    assert not trimmer.release_if_idle(0.0)  # first look: work was done (the warm-up), the spell starts
    assert not trimmer.release_if_idle(1.9) and released == []  # not quiet for long enough yet
    assert trimmer.release_if_idle(2.0) and released == [1]
    assert not trimmer.release_if_idle(60.0) and released == [1]  # once per quiet spell
    for t in range(10, 20):  # steady work: never released, however long it lasts
        work[0] += 1
        assert not trimmer.release_if_idle(100.0 + t)
    assert trimmer.release_if_idle(121.0) and trimmer.idle_releases == 2
    never = heap.HeapTrimmer(lambda: work[0], interval_s=0, when_idle=released.append, idle_after_s=0, start=False)
    assert not never.release_if_idle(0.0) and not never.release_if_idle(1e9)
    with pytest.raises(ValueError):
        heap.HeapTrimmer(lambda: 0, interval_s=0, when_idle=print, idle_after_s=-1)


def test_the_service_gives_its_pools_back_when_work_stops(service, astronaut, monkeypatch):
    """Every ONNX Runtime network's arena is shrunk, once, about IDLE_RELEASE_S after the last batch."""
    trimmer = service._heap_trimmer
    assert trimmer.running and trimmer.idle_after_s == TestConfig.IDLE_RELEASE_S > 0
    networks = (service.emotion.model, service.age_gender.model, *service.detector.networks)
    shrunk = []
    if service.backend == "onnxruntime":
        for network in networks:
            monkeypatch.setattr(network, "release_arena", lambda n=network: shrunk.append(n) or True)
    before = trimmer.idle_releases
    service.analyze(astronaut)
    deadline = time.monotonic() + TestConfig.IDLE_RELEASE_S + 5
    while trimmer.idle_releases == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trimmer.idle_releases == before + 1
    if service.backend == "onnxruntime":
        assert sorted(map(id, shrunk)) == sorted(map(id, networks))


def test_a_shrunk_arena_gives_back_what_a_large_batch_took(service):
    """ONNX Runtime's CPU arena keeps its high-water mark: P-net on 8 large pictures at once grows it by
    hundreds of MB, held until the session ends unless a run asks for a shrink."""
    import re

    from models.mtcnn_pipeline import PNET_WINDOW
    from models.onnx_backend import OrtModule, exported_models, make_session

    if service.backend != "onnxruntime":
        pytest.skip("the torch backend runs no ONNX sessions")

    def rss_mb() -> float:
        release_free_memory()
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

    s = service.settings
    path = exported_models(s.onnx_dir, s.emotion_weights, s.age_gender_weights)["mtcnn_pnet"]
    pnet = OrtModule(make_session(path, service.device, 1), smallest_side=PNET_WINDOW)  # its own arena
    pnet(torch.zeros(1, 3, PNET_WINDOW, PNET_WINDOW))
    before = rss_mb()
    pnet(torch.zeros(8, 3, 480, 640))  # a detector batch of 8 photos at the first scale of a 1280 search
    grown = rss_mb() - before
    assert grown > 100  # held after the run: the arena
    assert pnet.release_arena()
    assert rss_mb() - before < grown / 4
    off = OrtModule(make_session(path, service.device, 1, cpu_arena=False), smallest_side=PNET_WINDOW)
    assert not off.release_arena()  # no arena: nothing to shrink (and asking would be an error)
    with pytest.raises(ValueError):
        OrtModule(make_session(path, service.device, 1)).release_arena()  # P-net's open sides need a smallest side


def test_the_service_runs_a_heap_trimmer_that_counts_its_batches(service, astronaut):
    trimmer = service._heap_trimmer
    assert trimmer.running and trimmer.interval_s == TestConfig.HEAP_TRIM_INTERVAL_S
    before = service._items_served()
    service.analyze(astronaut)
    assert service._items_served() > before  # the detector and the heads' items: what tells work from idle


_MAPPED_AFTER_LARGE_FREE = """
import ctypes, sys
from app import heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] != "0":
    assert heap.set_mmap_threshold(int(sys.argv[1]))
libc.free(libc.malloc(8 << 20))  # a large block freed: glibc's default now raises its threshold
before = heap.heap_stats().mapped_blocks
block = libc.malloc(1 << 20)  # a 1 MB frame
print(heap.heap_stats().mapped_blocks - before)
libc.free(block)
"""


def test_large_blocks_get_their_own_mapping_after_large_frees():
    """glibc raises its mmap threshold when a large mapped block is freed, so the next large blocks grow
    the arenas (and stay resident); with the service's fixed threshold they are mapped and unmapped.
    In a fresh interpreter: other threads' blocks would blur the count here."""
    import subprocess
    import sys

    from app import heap

    if heap.heap_stats() is None:
        pytest.skip("glibc older than 2.33: no mallinfo2")

    def new_mappings(threshold: int) -> int:
        out = subprocess.run([sys.executable, "-c", _MAPPED_AFTER_LARGE_FREE, str(threshold)], capture_output=True,
                             text=True, check=True, cwd=Path(heap.__file__).parents[1])
        return int(out.stdout.split()[-1])

    assert new_mappings(0) == 0  # glibc's default: the 1 MB block comes from the arena
    assert new_mappings(TestConfig.MALLOC_MMAP_THRESHOLD) == 1  # the service's: a mapping of its own
    assert heap.set_mmap_threshold(0) is False  # 0: glibc's default left alone
    with pytest.raises(ValueError):
        heap.set_mmap_threshold(-1)


def test_threads_that_call_opencv_leave_nothing_behind(service):
    """Socket.IO runs every event on a new thread. With OpenCV's own thread pool on, each thread that
    calls OpenCV kept ~0.9 KB after it ended (2,000 threads: ~1.7 MB); the service turns the pool off."""
    from app.heap import heap_stats

    if heap_stats() is None:
        pytest.skip("glibc older than 2.33: no mallinfo2")
    assert cv2.getNumThreads() == 1
    frame = np.zeros((480, 640, 3), np.uint8)

    def frame_on_a_new_thread():
        thread = threading.Thread(target=cv2.resize, args=(frame, (320, 240)), kwargs={"interpolation": cv2.INTER_AREA})
        thread.start()
        thread.join()

    frame_on_a_new_thread()
    before = heap_stats().in_use_bytes
    for _ in range(2000):
        frame_on_a_new_thread()
    assert heap_stats().in_use_bytes - before < 300_000


def test_onnx_runtime_memory_arena_can_be_turned_off(service):
    """FACEAPP_ORT_CPU_ARENA=0: sessions without ONNX Runtime's CPU arena, which keeps its high-water mark."""
    from models.onnx_backend import exported_models, make_session

    if service.backend != "onnxruntime":
        pytest.skip("the torch backend runs no ONNX sessions")
    assert service.emotion.model.session.get_session_options().enable_cpu_mem_arena  # the default: on
    s = service.settings
    path = exported_models(s.onnx_dir, s.emotion_weights, s.age_gender_weights)["emotion"]
    assert not make_session(path, service.device, 1, cpu_arena=False).get_session_options().enable_cpu_mem_arena
