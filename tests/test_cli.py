"""`flask analyze` through the Flask CLI runner."""
from __future__ import annotations

import csv
import io
import json

import cv2
from helpers import ASTRONAUT_FACE, TestConfig, box_iou, encode

from app import create_app


def test_analyze_folder_as_jsonl_skips_bad_files(runner, tmp_path, astronaut, side_by_side):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(encode(astronaut))
    (tmp_path / "sub" / "pair.png").write_bytes(encode(side_by_side, "PNG"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "notes.txt").write_text("not an image, and not listed: folders yield image files only")
    result = runner.invoke(args=["analyze", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {line["path"].split("/")[-1]: line for line in lines}
    assert set(by_name) == {"a.jpg", "broken.jpg", "pair.png"}
    assert len(by_name["a.jpg"]["faces"]) == 1 and len(by_name["pair.png"]["faces"]) == 2
    assert "corrupt" in by_name["broken.jpg"]["error"]


def test_analyze_csv_and_no_detect(runner, tmp_path, astronaut):
    path = tmp_path / "face.jpg"
    path.write_bytes(encode(astronaut[50:190, 165:285]))
    result = runner.invoke(args=["analyze", "--no-detect", "--format", "csv", str(path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["face"] == "1" and rows[0]["emotion"]
    assert float(rows[0]["p_happy"]) >= 0 and rows[0]["gender"] in ("female", "male")


def test_exit_status_is_nonzero_only_when_nothing_was_analysed(runner, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = runner.invoke(args=["analyze", str(tmp_path / "bad.png"), str(tmp_path / "missing.jpg")])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [("error" in line) for line in lines] == [True, True]
    assert "no image could be analysed" in result.stderr


def test_the_worker_needs_redis_and_says_so(runner, monkeypatch):
    """`flask --app app worker` (and `faceapp worker`) without REDIS_URL: a clear error, no worker."""
    from app.config import Config

    monkeypatch.setattr(Config, "REDIS_URL", "")
    result = runner.invoke(args=["worker"])
    assert result.exit_code == 1 and "set REDIS_URL" in result.output


def test_analyze_decodes_large_photos_reduced_as_the_api_does(service, tmp_path, astronaut, monkeypatch):
    """The CLI reads big photos at most DECODE_MAX_SIDE pixels a side, and reports boxes in the photo's
    own pixels."""
    class Reduced(TestConfig):
        DECODE_MAX_SIDE = 600

    seen = []
    analyze = service.analyze
    monkeypatch.setattr(service, "analyze", lambda pixels, **kw: seen.append(pixels.shape) or analyze(pixels, **kw))
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)))
    result = create_app(Reduced, service=service).test_cli_runner().invoke(args=["analyze", str(path)])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert max(seen[0][:2]) <= 600
    assert (line["width"], line["height"]) == (1536, 1536)
    (face,) = line["faces"]
    assert box_iou(face["box"], [v * 3 for v in ASTRONAUT_FACE]) > 0.6, face["box"]
