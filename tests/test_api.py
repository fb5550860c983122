"""The JSON API end to end: real MTCNN and the shipped heads on real photos, and every bad input."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from app import create_app
from helpers import ASTRONAUT_FACE, box_iou, encode, upload
from models.emotion import EMOTION_CLASSES
from helpers import TestConfig

AGE_GROUPS = {"child", "teen", "young adult", "adult", "senior"}


def post_images(client, *files, query=""):
    return client.post(f"/api/v1/images{query}", data={"image": list(files)}, content_type="multipart/form-data")


def check_face_schema(face: dict) -> None:
    assert set(face) >= {"box", "score", "landmarks", "emotion", "age", "gender"}
    x1, y1, x2, y2 = face["box"]
    assert x2 > x1 and y2 > y1
    assert 0 <= face["score"] <= 1
    assert list(face["emotion"]["probabilities"]) == list(EMOTION_CLASSES)
    assert sum(face["emotion"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert face["emotion"]["label"] == max(face["emotion"]["probabilities"], key=face["emotion"]["probabilities"].get)
    assert 0 <= face["age"]["years"] <= 100 and face["age"]["std"] >= 0
    assert face["age"]["group"] in AGE_GROUPS
    assert face["gender"]["label"] in ("female", "male") and 0.5 <= face["gender"]["probability"] <= 1


def test_astronaut_has_one_face_on_her_face(client, astronaut):
    r = post_images(client, upload(encode(astronaut), "astronaut.jpg"))
    assert r.status_code == 200, r.json
    body = r.json
    assert set(body) == {"images", "models", "timings_ms"}
    (image,) = body["images"]
    assert (image["filename"], image["width"], image["height"]) == ("astronaut.jpg", 512, 512)
    (face,) = image["faces"]
    check_face_schema(face)
    assert box_iou(face["box"], ASTRONAUT_FACE) > 0.6
    assert len(face["landmarks"]) == 5
    assert set(image["timings_ms"]) >= {"decode", "detect", "align", "models", "total"}
    assert set(body["models"]) == {"emotion", "age_gender", "detector"}


def test_grace_hopper_has_one_face(client, grace_hopper):
    (image,) = post_images(client, upload(encode(grace_hopper), "hopper.jpg")).json["images"]
    assert len(image["faces"]) == 1
    check_face_schema(image["faces"][0])


def test_two_photos_side_by_side_give_two_faces(client, side_by_side):
    (image,) = post_images(client, upload(encode(side_by_side, "PNG"), "pair.png")).json["images"]
    faces = sorted(image["faces"], key=lambda f: f["box"][0])
    assert len(faces) == 2
    assert faces[0]["box"][2] < 512 < faces[1]["box"][0]  # one face in each half


def test_several_images_in_one_request(client, astronaut, grace_hopper):
    r = post_images(client, upload(encode(astronaut), "a.jpg"), upload(encode(grace_hopper, "WEBP"), "g.webp"))
    assert r.status_code == 200
    assert [(i["filename"], len(i["faces"])) for i in r.json["images"]] == [("a.jpg", 1), ("g.webp", 1)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_every_supported_format(client, astronaut, fmt):
    r = post_images(client, upload(encode(astronaut, fmt), f"a.{fmt.lower()}"))
    assert r.status_code == 200 and len(r.json["images"][0]["faces"]) == 1


def test_no_detect_treats_the_image_as_one_face(client, astronaut):
    crop = astronaut[50:190, 165:285]
    (image,) = post_images(client, upload(encode(crop), "crop.jpg"), query="?detect=false").json["images"]
    (face,) = image["faces"]
    check_face_schema(face)
    assert face["box"] == [0, 0, crop.shape[1], crop.shape[0]] and face["landmarks"] == []


def test_no_face_gives_an_empty_list(client):
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    (image,) = post_images(client, upload(encode(gradient, "PNG"), "g.png")).json["images"]
    assert image["faces"] == []


def test_exif_orientation_is_honoured(client, astronaut):
    # Store the pixels rotated and tag them "rotate 90 CW to view": the server must undo it.
    stored = np.ascontiguousarray(np.rot90(astronaut, 1))  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    (image,) = post_images(client, upload(encode(stored, exif=exif), "rot.jpg")).json["images"]
    (face,) = image["faces"]
    assert box_iou(face["box"], ASTRONAUT_FACE) > 0.6


def test_transparent_png_is_accepted(client, astronaut):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0
    r = post_images(client, upload(encode(rgba, "PNG"), "alpha.png"))
    assert r.status_code == 200 and len(r.json["images"][0]["faces"]) == 1


# -- bad input: a clear JSON error, never a 500 -------------------------------------------------
def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


@pytest.mark.parametrize("data,name,status,code", [
    (b"", "empty.jpg", 400, "empty_file"),
    (b"this is not an image", "notes.jpg", 415, "unsupported_media_type"),
    (None, "anim.gif", 415, "unsupported_media_type"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "broken.jpg", 400, "corrupt_image"),
])
def test_bad_files_get_clear_errors(client, data, name, status, code):
    r = post_images(client, upload(gif_bytes() if data is None else data, name))
    assert r.status_code == status
    assert r.json["error"]["code"] == code and name not in r.json["error"]["message"]


def test_tiny_images_have_no_faces_rather_than_errors(client):
    for size in [(1, 1), (15, 15), (3, 2000)]:
        r = post_images(client, upload(encode(np.zeros(size + (3,), np.uint8), "PNG"), "tiny.png"))
        assert r.status_code == 200 and r.json["images"][0]["faces"] == []


def test_a_bad_file_in_a_batch_is_named(client, astronaut):
    r = post_images(client, upload(encode(astronaut), "good.jpg"), upload(b"nope", "bad.jpg"))
    assert r.status_code == 415 and r.json["error"]["message"].startswith("bad.jpg: ")


def test_truncated_jpeg_is_corrupt(client, astronaut):
    data = encode(astronaut)
    r = post_images(client, upload(data[: len(data) // 2], "half.jpg"))
    assert r.status_code == 400 and r.json["error"]["code"] == "corrupt_image"


def test_missing_field(client):
    r = client.post("/api/v1/images", data={"picture": upload(b"x")}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_image"


def test_bad_detect_flag(client, astronaut):
    r = post_images(client, upload(encode(astronaut)), query="?detect=perhaps")
    assert r.status_code == 400 and "detect" in r.json["error"]["message"]


def test_decompression_bomb_is_refused(client):
    # 10000 x 10000 = 100 MP of black: a ~100 kB PNG, far over the 40 MP default limit.
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")
    r = post_images(client, upload(buf.getvalue(), "bomb.png"))
    assert r.status_code == 422 and r.json["error"]["code"] == "too_many_pixels"


def test_oversized_upload_is_413(service, astronaut):
    class SmallUploads(TestConfig):
        MAX_UPLOAD_MB = 0.05
        MAX_CONTENT_LENGTH = int(0.05 * 1024 * 1024)

    client = create_app(SmallUploads, service=service).test_client()
    r = post_images(client, upload(encode(astronaut, "PNG"), "big.png"))
    assert r.status_code == 413
    assert r.json["error"]["code"] == "request_entity_too_large" and "0.05 MB" in r.json["error"]["message"]


def test_too_many_images(service, astronaut):
    class FewImages(TestConfig):
        MAX_IMAGES_PER_REQUEST = 2

    client = create_app(FewImages, service=service).test_client()
    data = encode(astronaut)
    r = post_images(client, *[upload(data, f"{i}.jpg") for i in range(3)])
    assert r.status_code == 400 and r.json["error"]["code"] == "too_many_images"


def test_unknown_route_and_method_are_json(client):
    assert client.get("/api/v1/nope").json["error"]["code"] == "not_found"
    r = client.get("/api/v1/images")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready" and r.json["device"].startswith("cpu")
    assert r.json["models"]["emotion"]["labels"]["emotion"] == list(EMOTION_CLASSES)


def test_concurrent_requests_get_their_own_results(client, astronaut, grace_hopper, side_by_side):
    """Requests in flight together share batches but never each other's faces."""
    photos = {"astronaut": (astronaut, 1), "hopper": (grace_hopper, 1), "pair": (side_by_side, 2)}
    expected = {name: client.post("/api/v1/images", data={"image": upload(encode(im), name)}).json
                for name, (im, _) in photos.items()}
    results: dict[str, list] = {name: [] for name in photos}
    errors = []

    def worker(name):
        try:
            for _ in range(3):
                r = client.post("/api/v1/images", data={"image": upload(encode(photos[name][0]), name)})
                results[name].append(r.json["images"][0])
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in photos for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, got in results.items():
        want = expected[name]["images"][0]["faces"]
        assert len(got) == 6
        for image in got:
            assert image["filename"] == name and len(image["faces"]) == photos[name][1]
            for f, w in zip(image["faces"], want):
                assert f["box"] == w["box"]
                assert f["emotion"]["probabilities"] == pytest.approx(w["emotion"]["probabilities"], abs=1e-3)
                assert f["age"]["years"] == pytest.approx(w["age"]["years"], abs=0.2)


def test_openapi_document_is_served(client):
    r = client.get("/api/v1/openapi.yaml")
    assert r.status_code == 200 and b"/api/v1/images" in r.data and b"openapi: 3" in r.data


# -- the contract: what the OpenAPI document and the README say is what the server does ---------
def test_method_not_allowed_says_which_methods_are(client):
    for method, path, allowed in (("put", "/api/v1/images", {"POST"}),
                                  ("patch", "/api/v1/videos/" + "0" * 32, {"GET", "DELETE"}),
                                  ("post", "/healthz", {"GET"})):
        r = getattr(client, method)(path, headers={"Accept": "application/json"})
        assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed", path
        assert allowed <= {m.strip() for m in r.headers.get("Allow", "").split(",")}, (path, r.headers)
    page = client.post("/healthz", headers={"Accept": "text/html"})  # the HTML error page has it too
    assert page.status_code == 405 and "GET" in page.headers.get("Allow", "")


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # PNG signature, no header: Pillow quotes its file object
    b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x01" * 40,
    b"BM" + b"\xff" * 60,
])
def test_error_messages_never_quote_object_reprs(client, data):
    r = post_images(client, upload(data, "x.png"))
    assert r.status_code == 400 and r.json["error"]["code"] == "corrupt_image"
    message = r.json["error"]["message"]
    assert "0x" not in message and "<" not in message, message


def test_error_body_removes_reprs():
    from app.errors import error_body

    message = error_body("x", "cannot identify image file <_io.BytesIO object at 0x7ff9a1b2c3d0>")["error"]["message"]
    assert message == "cannot identify image file"
