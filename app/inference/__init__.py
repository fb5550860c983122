"""The shared inference service: detector + heads, micro-batching, typed results."""
from flask import current_app


def get_service():
    """The process's one ``InferenceService`` (built by ``create_app``)."""
    return current_app.extensions["inference"]
