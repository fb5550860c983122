"""The shared inference service: detector + heads, micro-batching, typed results."""
from flask import current_app

# Who asks: the detector and the heads share their time fairly between these (batching.FairQueue), so
# that a video job, which asks for one frame at a time, is not starved by 16 live clients' frames.
PHOTO, LIVE, VIDEO = "photo", "live", "video"
# Shares of each worker when every kind has work waiting: a video job's frames and live clients' frames
# are paced by their answers, a photo is answered once; measured with bench/soak.py (README, Benchmarks).
SOURCE_WEIGHTS = {LIVE: 2.0, PHOTO: 1.0, VIDEO: 2.0}


def get_service():
    """The process's one ``InferenceService`` (built by ``create_app``)."""
    return current_app.extensions["inference"]
