"""Shared helpers for the data loaders: the format error and a small ``.npz`` cache.

Caches hold data derived from research-only data sets: they live in a git-ignored folder
(``.cache/`` at the repository root by default) and must never be committed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache"


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and line."""


def source_key(*parts: object) -> str:
    """A short hash of whatever identifies a cache entry (paths, sizes, mtimes, settings)."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def file_stamp(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): changes whenever the file is replaced or edited."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache file atomically so an interrupted run never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
