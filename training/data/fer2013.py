"""FER2013 (Kaggle CSV) with optional FER+ vote counts.

``fer2013.csv`` / ``fer2013.csv.gz`` has the columns ``emotion,pixels,Usage``: a class index in FER2013
order (see ``models.emotion.EMOTION_CLASSES``), 2,304 space-separated grey values (48x48, row-major) and
the split name (Training, PublicTest, PrivateTest). ``fer2013new.csv`` (FER+) holds ten annotators' votes
per row, row-aligned with the former, in its own class order; we reorder them to FER2013's order and drop
the contempt / unknown / not-a-face columns.
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.emotion import EMOTION_CLASSES
from training.data.cache import DEFAULT_CACHE_DIR, DataFormatError, file_stamp, load_npz, save_npz, source_key

log = logging.getLogger(__name__)

IMAGE_SIZE = 48
SPLITS = ("Training", "PublicTest", "PrivateTest")
CSV_NAMES = ("fer2013.csv.gz", "fer2013.csv")
FERPLUS_NAME = "fer2013new.csv"
# FER+ column name for each FER2013 class, in FER2013 order.
FERPLUS_COLUMNS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")


@dataclass
class FerData:
    """The whole data set in memory.

    Attributes:
        images: uint8 (N, 48, 48) grey faces.
        labels: int64 (N,) FER2013 class indices.
        usage: (N,) split names, one of ``SPLITS``.
        votes: float32 (N, 7) FER+ vote counts in FER2013 class order, or None.
        source: the CSV file the rows came from.
    """

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    votes: np.ndarray | None
    source: Path

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split, in file order."""
        if split not in SPLITS:
            raise ValueError(f"unknown FER2013 split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.usage == split)

    def split_sizes(self) -> dict[str, int]:
        return {s: int((self.usage == s).sum()) for s in SPLITS}


def find_csv(path: str | Path) -> Path:
    """A path to the CSV itself or to the directory holding it -> the CSV file."""
    path = Path(path)
    if path.is_dir():
        for name in CSV_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {' or '.join(CSV_NAMES)} in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"FER2013 file {path} does not exist")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def parse_fer_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the Kaggle CSV -> (images, labels, usage). Raises DataFormatError naming file and line."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    usage: list[str] = []
    n_pixels = IMAGE_SIZE * IMAGE_SIZE
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["emotion", "pixels", "Usage"]:
            raise DataFormatError(f"{path}, line 1: expected the header 'emotion,pixels,Usage', got {header!r}")
        for row in reader:
            line = reader.line_num
            if len(row) != 3:
                raise DataFormatError(f"{path}, line {line}: expected 3 fields, got {len(row)}")
            label_s, pixels_s, split = row
            try:
                label = int(label_s)
            except ValueError:
                raise DataFormatError(f"{path}, line {line}: emotion {label_s!r} is not an integer") from None
            if not 0 <= label < len(EMOTION_CLASSES):
                raise DataFormatError(f"{path}, line {line}: emotion {label} is outside 0..{len(EMOTION_CLASSES) - 1}")
            try:
                pixels = np.array(pixels_s.split(), dtype=np.int32)
            except ValueError:
                raise DataFormatError(f"{path}, line {line}: pixels contain a non-numeric value") from None
            if pixels.size != n_pixels:
                raise DataFormatError(f"{path}, line {line}: expected {n_pixels} pixel values, got {pixels.size}")
            if pixels.min() < 0 or pixels.max() > 255:
                raise DataFormatError(f"{path}, line {line}: pixel values must lie in 0..255")
            split = split.strip()
            if split not in SPLITS:
                raise DataFormatError(f"{path}, line {line}: Usage {split!r} is not one of {SPLITS}")
            images.append(pixels.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels.append(label)
            usage.append(split)
    if not labels:
        raise DataFormatError(f"{path}: no data rows")
    return np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(usage)


def parse_ferplus_csv(path: Path, usage: np.ndarray) -> np.ndarray:
    """Read FER+ votes -> float32 (N, 7) in FER2013 class order; checks row alignment via Usage."""
    votes: list[list[float]] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or "Usage" not in header:
            raise DataFormatError(f"{path}, line 1: not a FER+ header: {header!r}")
        try:
            cols = [header.index(name) for name in FERPLUS_COLUMNS]
        except ValueError as exc:
            raise DataFormatError(f"{path}, line 1: missing FER+ column ({exc})") from None
        usage_col = header.index("Usage")
        for row in reader:
            line = reader.line_num
            i = len(votes)
            if i >= len(usage):
                raise DataFormatError(f"{path}, line {line}: more rows than the FER2013 file ({len(usage)})")
            if len(row) != len(header):
                raise DataFormatError(f"{path}, line {line}: expected {len(header)} fields, got {len(row)}")
            if row[usage_col].strip() != usage[i]:
                raise DataFormatError(f"{path}, line {line}: Usage {row[usage_col]!r} differs from the FER2013 "
                                      f"row's {usage[i]!r}; the files are not row-aligned")
            try:
                votes.append([float(row[c]) for c in cols])
            except ValueError:
                raise DataFormatError(f"{path}, line {line}: vote counts must be numbers") from None
    if len(votes) != len(usage):
        raise DataFormatError(f"{path}: {len(votes)} rows, but the FER2013 file has {len(usage)}")
    return np.asarray(votes, dtype=np.float32)


def load_fer2013(path: str | Path, ferplus: str | Path | bool | None = None,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> FerData:
    """Load FER2013, optionally with FER+ votes.

    Args:
        path: the CSV (``.csv`` or ``.csv.gz``) or the directory holding it.
        ferplus: path to ``fer2013new.csv``; True looks for it beside the CSV; None/False skips votes.
        cache_dir: where parsed arrays are cached as ``.npz`` (keyed by file size and mtime); None disables.
    """
    csv_path = find_csv(path)
    votes_path: Path | None = None
    if ferplus is True:
        votes_path = csv_path.parent / FERPLUS_NAME
        if not votes_path.is_file():
            raise FileNotFoundError(f"FER+ votes requested but {votes_path} does not exist")
    elif ferplus:
        votes_path = Path(ferplus)
        if votes_path.is_dir():
            votes_path = votes_path / FERPLUS_NAME

    cache_file = None
    if cache_dir is not None:
        key = source_key("fer2013-v1", file_stamp(csv_path), file_stamp(votes_path) if votes_path else None)
        cache_file = Path(cache_dir) / f"fer2013-{key}.npz"
        cached = load_npz(cache_file)
        if cached is not None:
            log.info("FER2013 from cache %s", cache_file)
            return FerData(cached["images"], cached["labels"], cached["usage"].astype(str),
                           cached.get("votes"), csv_path)

    images, labels, usage = parse_fer_csv(csv_path)
    votes = parse_ferplus_csv(votes_path, usage) if votes_path else None
    data = FerData(images, labels, usage, votes, csv_path)
    if cache_file is not None:
        arrays = {"images": images, "labels": labels, "usage": usage.astype("U11")}
        if votes is not None:
            arrays["votes"] = votes
        save_npz(cache_file, **arrays)
    return data
