"""The app factory and its refusal to start on missing or corrupt weights."""
from __future__ import annotations

import pytest

from app import create_app
from app.inference.service import InferenceService, ServiceSettings
from helpers import TestConfig
from models.checkpoint import CheckpointError


def test_factory_builds_an_app_with_all_blueprints(app):
    assert app.testing
    assert {"photo", "api", "probes", "vendor"} <= set(app.blueprints)
    assert app.extensions["inference"].ready


def test_photo_page_names_the_device(client):
    r = client.get("/")
    assert r.status_code == 200 and b"cpu" in r.data


def settings(**overrides) -> ServiceSettings:
    base = ServiceSettings.from_config(TestConfig)
    return ServiceSettings(**{**base.__dict__, **overrides})


def test_missing_weights_refuse_to_start(tmp_path):
    missing = tmp_path / "emotion.pt"
    with pytest.raises(CheckpointError) as info:
        InferenceService(settings(emotion_weights=str(missing)))
    message = str(info.value)
    assert str(missing) in message and "python -m training.train emotion" in message


def test_corrupt_weights_refuse_to_start(tmp_path):
    bad = tmp_path / "age_gender.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError) as info:
        InferenceService(settings(age_gender_weights=str(bad)))
    assert str(bad) in str(info.value) and "python -m training.train age_gender" in str(info.value)


def test_swapped_weights_are_refused(tmp_path):
    s = ServiceSettings.from_config(TestConfig)
    with pytest.raises(CheckpointError, match="expected 'emotion'"):
        InferenceService(settings(emotion_weights=s.age_gender_weights))


def test_create_app_fails_loudly_without_weights(tmp_path):
    class NoWeights(TestConfig):
        EMOTION_WEIGHTS = str(tmp_path / "nope.pt")

    with pytest.raises(CheckpointError, match="nope.pt"):
        create_app(NoWeights)


def test_error_pages_are_html_for_browsers(client):
    r = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert r.status_code == 404 and r.mimetype == "text/html"
    r = client.get("/no-such-page", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_vendor_route_serves_only_known_files(client):
    assert client.get("/vendor/package.json").status_code == 404
    assert client.get("/vendor/..%2Fpackage.json").status_code == 404
