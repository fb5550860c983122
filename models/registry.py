"""Build a network by name.

Architectures register themselves with ``@register_model``; ``create_model`` is the only way in.
A checkpoint names its architecture and constructor arguments, so loaders need no constants.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: file ``fn`` under its function name."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        warnings.warn(f"model {name!r} registered twice; the later definition wins", stacklevel=2)
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build architecture ``name``; ``None`` arguments are dropped so defaults live in the builder."""
    _import_builtin_models()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _import_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from models import age_gender, emotion  # noqa: F401
