"""The shared inference service: detector + heads, micro-batching, typed results."""
from flask import current_app

# Who asks: the detector and the heads share their time fairly between these (batching.FairQueue), so
# that a video job, which asks for one frame at a time, is not starved by 16 live clients' frames.
PHOTO, LIVE, VIDEO = "photo", "live", "video"


def get_service():
    """The process's one ``InferenceService`` (built by ``create_app``)."""
    return current_app.extensions["inference"]
