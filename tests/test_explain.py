"""?explain=true: per face, an occlusion-sensitivity heat map of what drove its emotion label."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from helpers import encode, upload


def post(client, image, query="?explain=true"):
    r = client.post(f"/api/v1/images{query}", data={"image": upload(encode(image, "PNG"), "p.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    return r.json["images"][0]


def heat_map(explanation) -> np.ndarray:
    """The PNG's opacity, which is the heat (RGBA, alpha proportional to heat / max)."""
    prefix, data = explanation["png"].split(",", 1)
    assert prefix == "data:image/png;base64"
    png = Image.open(io.BytesIO(base64.b64decode(data)))
    assert png.mode == "RGBA" and png.size == (explanation["width"], explanation["height"])
    return np.asarray(png)[..., 3].astype(np.float64)


def test_the_smile_drives_the_astronauts_happy_label(client, astronaut):
    (face,) = post(client, astronaut)["faces"]
    explanation = face["explanation"]
    assert explanation["method"] == "occlusion" and explanation["label"] == face["emotion"]["label"] == "happy"
    assert explanation["box"] == face["box"] and max(explanation["width"], explanation["height"]) == 64
    heat = heat_map(explanation)
    lower = heat[heat.shape[0] // 2:].sum() / heat.sum()
    assert lower > 0.5, f"only {lower:.2f} of the heat on the lower half of the face"
    assert explanation["peak_drop"] > 0


def test_explanations_are_deterministic(client, astronaut, grace_hopper):
    for image in (astronaut, grace_hopper):
        first, second = post(client, image), post(client, image)
        assert [f["explanation"] for f in first["faces"]] == [f["explanation"] for f in second["faces"]]
        assert "explain" in first["timings_ms"]


def test_every_face_gets_its_own_map(client, side_by_side):
    faces = post(client, side_by_side)["faces"]
    assert len(faces) == 2
    assert all(f["explanation"]["box"] == f["box"] and heat_map(f["explanation"]).sum() > 0 for f in faces)
    assert faces[0]["explanation"]["png"] != faces[1]["explanation"]["png"]


def test_no_explanation_unless_asked_and_a_bad_flag_is_refused(client, astronaut):
    (face,) = post(client, astronaut, "")["faces"]
    assert "explanation" not in face
    r = client.post("/api/v1/images?explain=maybe", data={"image": upload(encode(astronaut))},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "bad_request"


def test_a_picture_taken_as_one_face_is_explained_over_the_whole_picture(client, astronaut):
    crop = np.ascontiguousarray(astronaut[40:200, 160:290])
    (face,) = post(client, crop, "?detect=false&explain=true")["faces"]
    assert face["explanation"]["box"] == [0.0, 0.0, 130.0, 160.0]
    assert heat_map(face["explanation"]).sum() > 0


def test_openapi_describes_the_explanation(client):
    spec = client.get("/api/v1/openapi.yaml").get_data(as_text=True)
    assert "- name: explain" in spec and 'explanation: {$ref: "#/components/schemas/Explanation"}' in spec
    assert "\n    Explanation:\n" in spec


def test_the_torch_backend_explains_alike(service, astronaut):
    """Occlusion needs forward passes only: PyTorch draws the same map as ONNX Runtime (the default here)."""
    from app.inference.service import InferenceService, ServiceSettings
    from helpers import TestConfig

    base = ServiceSettings.from_config(TestConfig)
    torch_service = InferenceService(ServiceSettings(**{**base.__dict__, "backend": "torch"}))
    try:
        (face,) = service.analyze(astronaut).faces
        ours, theirs = service.explain(astronaut, face), torch_service.explain(astronaut, face)
        assert service.backend == "onnxruntime" and ours.label == theirs.label
        assert abs(ours.peak_drop - theirs.peak_drop) < 1e-3
        a = heat_map({"png": ours.png, "width": ours.width, "height": ours.height})
        b = heat_map({"png": theirs.png, "width": theirs.width, "height": theirs.height})
        assert np.abs(a - b).max() <= 3  # opacity levels out of 210
    finally:
        torch_service.close()
        torch.set_num_threads(service.torch_threads)  # torch's threads are per process
