"""POST /api/v1/images: analyse one or more uploaded pictures."""
from __future__ import annotations

import time

from flask import current_app, request

from app.api import bp
from app.errors import bad_request, error_response
from app.budget import BudgetExceeded, PixelBudget
from app.imaging import ImageError, decode_image, image_pixels
from app.inference import get_service
from app.inference.batching import QueueFullError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str | None, default: bool) -> bool | None:
    """Query-string flag -> bool; None when the value is not a boolean."""
    if value is None:
        return default
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


@bp.post("/images")
def analyze_images():
    t0 = time.perf_counter()
    detect = parse_bool(request.args.get("detect"), True)
    if detect is None:
        return bad_request("query parameter 'detect' must be true or false")
    explain = parse_bool(request.args.get("explain"), False)
    if explain is None:
        return bad_request("query parameter 'explain' must be true or false")
    files = request.files.getlist("image")  # may raise 413, handled as JSON
    if not files:
        return bad_request("send the picture as multipart/form-data in a field named 'image'", "missing_image")
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if len(files) > limit:
        return bad_request(f"{len(files)} images in one request; the limit is {limit}", "too_many_images")

    service = get_service()
    config = current_app.config
    budget: PixelBudget = current_app.extensions["pixel_budget"]
    results = []
    for f in files:
        name = f.filename or "image"
        t_read = time.perf_counter()
        data = f.read()
        try:
            # One picture at a time per request, each within the process-wide pixel budget.
            with budget.reserve(image_pixels(data, config["MAX_IMAGE_PIXELS"])):
                decoded = decode_image(data, config["MAX_IMAGE_PIXELS"], config["DECODE_MAX_SIDE"])
                decode_ms = (time.perf_counter() - t_read) * 1000
                analysis = service.analyze(decoded.pixels, detect=detect)
                if explain:  # on the decoded pixels, before they are freed; boxes rescaled with the faces
                    t_explain = time.perf_counter()
                    for face in analysis.faces:
                        face.explanation = service.explain(decoded.pixels, face)
                    analysis.timings_ms["explain"] = (time.perf_counter() - t_explain) * 1000
                    analysis.timings_ms["total"] += analysis.timings_ms["explain"]
                analysis = analysis.rescaled(*decoded.scale, decoded.width, decoded.height)
                del decoded
        except ImageError as exc:
            # With several files the message says which one failed.
            message = f"{name}: {exc.message}" if len(files) > 1 else exc.message
            return error_response(exc.status, message, exc.code)
        except (QueueFullError, BudgetExceeded):
            return error_response(503, "the server is busy; try again in a moment", "busy", {"Retry-After": "1"})
        analysis.timings_ms = {"decode": decode_ms, **analysis.timings_ms}
        analysis.timings_ms["total"] += decode_ms
        results.append({"filename": name, **analysis.to_dict()})
    return {
        "images": results,
        "models": service.describe_models(),
        "timings_ms": {"total": round((time.perf_counter() - t0) * 1000, 2)},
    }
