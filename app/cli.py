"""`faceapp analyze PATH... [--no-detect] [--format jsonl|csv]` (also `flask --app app analyze`).

Analyses files and folders (recursively) through the same service as the web app and prints one
JSON line per image (``{"path", "width", "height", "faces"}``, or ``{"path", "error"}`` for a file it
could not read, then goes on), or CSV with one row per face (numbered from 1, as on the pages).
Exit status 1 only when nothing could be analysed.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.imaging import IMAGE_EXTENSIONS, ImageError, decode_image
from app.inference import get_service
from models.emotion import EMOTION_CLASSES

CSV_COLUMNS = ["path", "face", "x1", "y1", "x2", "y2", "score", "emotion",
               *[f"p_{c}" for c in EMOTION_CLASSES], "age", "age_std", "age_group", "gender",
               "gender_probability", "error"]


def iter_image_paths(paths: tuple[str, ...]) -> Iterator[Path]:
    """Files as given; folders expanded recursively to their image files, in sorted order."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield p


def _csv_rows(path: str, result: dict) -> list[dict]:
    if "error" in result:
        return [{"path": path, "error": result["error"]}]
    rows = []
    for number, face in enumerate(result["faces"], start=1):
        x1, y1, x2, y2 = face["box"]
        row = {"path": path, "face": number, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": face["score"],
               "emotion": face["emotion"]["label"], "age": face["age"]["years"], "age_std": face["age"]["std"],
               "age_group": face["age"]["group"], "gender": face["gender"]["label"],
               "gender_probability": face["gender"]["probability"]}
        row.update({f"p_{c}": p for c, p in face["emotion"]["probabilities"].items()})
        rows.append(row)
    return rows


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True)
@click.option("--no-detect", is_flag=True, help="Treat each whole image as one already-cropped face.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@with_appcontext
def analyze_command(paths: tuple[str, ...], no_detect: bool, fmt: str) -> None:
    """Analyse image files and folders; print JSON lines (or CSV) to stdout."""
    service = get_service()
    max_pixels, max_side = current_app.config["MAX_IMAGE_PIXELS"], current_app.config["DECODE_MAX_SIDE"]
    out = sys.stdout  # read at call time: the CLI runner swaps it in tests
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    analysed = 0
    for path in iter_image_paths(paths):
        try:
            # Reduced as the API decodes it (app/imaging.py); boxes come back in the picture's own pixels.
            decoded = decode_image(path.read_bytes(), max_pixels, max_side)
            analysis = service.analyze(decoded.pixels, detect=not no_detect)
            result = analysis.rescaled(*decoded.scale, decoded.width, decoded.height).to_dict()
            result.pop("timings_ms", None)
            analysed += 1
        except ImageError as exc:
            result = {"error": exc.message}
        except OSError as exc:
            result = {"error": f"cannot read file: {exc.strerror or exc}"}
        if writer:
            writer.writerows(_csv_rows(str(path), result))
        else:
            out.write(json.dumps({"path": str(path), **result}) + "\n")
        out.flush()
    if analysed == 0:
        click.echo("error: no image could be analysed", err=True)
        sys.exit(1)


def init_app(app: Flask) -> None:
    from app.video.worker import worker_command

    app.cli.add_command(analyze_command)
    app.cli.add_command(worker_command)
