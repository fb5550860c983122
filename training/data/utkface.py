"""UTKFace "Aligned & Cropped" faces: age, gender and race from the file names.

File names are ``{age}_{gender}_{race}_{datetime}.jpg.chip.jpg`` (gender 0 male / 1 female; race 0 White,
1 Black, 2 Asian, 3 Indian, 4 Others). The set has no official split, holds a few malformed names and
byte-identical images filed under different labels, so loading goes:

1. parse every name; malformed ones are skipped with a warning and counted;
2. hash every file's bytes and deduplicate *before* splitting (copies of one image in train and test would
   inflate test scores); copies that agree on the labels keep one file, copies that disagree are all dropped;
3. split with :func:`make_split`: sort by content hash, then a seeded permutation, 80/10/10;
4. decode and resize every kept image with ``models.preprocess.resize_face`` (cached as ``.npz``).
"""
from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.preprocess import PreprocessConfig, resize_face
from training.data.cache import DEFAULT_CACHE_DIR, DataFormatError, load_npz, save_npz, source_key

log = logging.getLogger(__name__)

RACE_CLASSES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# A stray space before the extension still leaves all three labels readable, so it is tolerated;
# anything else (a missing field, a missing dot) is malformed.
_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\s*\.jpg\.chip\.jpg$")


@dataclass(frozen=True)
class UtkRecord:
    """One file and the labels its name carries."""

    path: Path
    age: int
    gender: int
    race: int


def parse_name(name: str) -> tuple[int, int, int] | None:
    """``'25_1_2_2017...jpg.chip.jpg'`` -> (age, gender, race), or None for a malformed name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass
class ScanResult:
    records: list[UtkRecord]
    hashes: list[str]
    n_files: int
    malformed: list[str] = field(default_factory=list)
    n_duplicates_removed: int = 0  # extra copies dropped because an identical copy with the same labels is kept
    n_conflicting_dropped: int = 0  # files dropped because identical copies carry different labels


def scan_folder(folder: str | Path) -> ScanResult:
    """Parse names, hash bytes and deduplicate (steps 1-2 above). Records come back sorted by hash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"UTKFace folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(".jpg"))
    if not files:
        raise DataFormatError(f"{folder}: no .jpg files")
    groups: dict[str, list[UtkRecord]] = {}
    malformed: list[str] = []
    for p in files:
        labels = parse_name(p.name)
        if labels is None:
            malformed.append(p.name)
            continue
        digest = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
        groups.setdefault(digest, []).append(UtkRecord(p, *labels))
    if malformed:
        warnings.warn(f"{folder}: skipped {len(malformed)} malformed file name(s), e.g. {malformed[:3]}",
                      stacklevel=2)
    records, hashes = [], []
    n_dup = n_conflict = 0
    for digest in sorted(groups):
        copies = groups[digest]
        if len({(r.age, r.gender, r.race) for r in copies}) > 1:
            n_conflict += len(copies)  # we cannot tell which label is right: drop them all
            continue
        n_dup += len(copies) - 1
        records.append(copies[0])  # copies are in name order, so the kept one is deterministic
        hashes.append(digest)
    return ScanResult(records, hashes, len(files), malformed, n_dup, n_conflict)


def make_split(hashes: list[str] | np.ndarray, seed: int = 0,
               fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """The documented, reproducible split: sort by content hash, seeded permutation, cut 80/10/10.

    Sorting by hash first makes the split independent of file names and directory order, so the same
    images and seed give the same split on any machine. Returns an array of split names per input.
    """
    hashes = np.asarray(hashes)
    if len(set(hashes.tolist())) != len(hashes):
        raise ValueError("deduplicate before splitting: hashes must be unique")
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError("split fractions must sum to 1")
    order = np.argsort(hashes, kind="stable")
    perm = order[np.random.default_rng(seed).permutation(len(hashes))]
    n = len(hashes)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    split = np.empty(n, dtype="U5")
    split[perm[:n_train]] = "train"
    split[perm[n_train:n_train + n_val]] = "val"
    split[perm[n_train + n_val:]] = "test"
    return split


def read_rgb(path: str | Path) -> np.ndarray:
    """A JPEG -> RGB uint8 (H, W, 3)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class UtkData:
    """Deduplicated, split, resized UTKFace.

    Attributes:
        images: uint8 (N, S, S, C) crops at the model input size.
        ages, genders, races: int64 (N,) labels from the file names (ages unclipped).
        split: (N,) "train" | "val" | "test".
        names, hashes: file name and content hash per row (rows sorted by hash).
        stats: file counts: total, malformed, duplicates removed, conflicting copies dropped.
    """

    images: np.ndarray
    ages: np.ndarray
    genders: np.ndarray
    races: np.ndarray
    split: np.ndarray
    names: np.ndarray
    hashes: np.ndarray
    folder: Path
    stats: dict[str, int]

    def __len__(self) -> int:
        return len(self.ages)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown UTKFace split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def split_sizes(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}


def load_utkface(folder: str | Path, cfg: PreprocessConfig, seed: int = 0,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> UtkData:
    """Scan, deduplicate, split (seeded) and load UTKFace resized to ``cfg.input_size``.

    The cache key covers every file's name, size and mtime plus the input size and channels, so adding,
    renaming or editing a file rebuilds it.
    """
    folder = Path(folder)
    cache_file = None
    if cache_dir is not None:
        listing = sorted((p.name, st.st_size, st.st_mtime_ns)
                         for p in folder.iterdir() if p.is_file() for st in [p.stat()])
        key = source_key("utkface-v2", folder.resolve(), listing, cfg.input_size, cfg.channels)
        cache_file = Path(cache_dir) / f"utkface-{cfg.input_size}{cfg.channels}-{key}.npz"
        cached = load_npz(cache_file)
        if cached is not None:
            log.info("UTKFace from cache %s", cache_file)
            stats = {k: int(v) for k, v in zip(cached["stat_keys"].tolist(), cached["stat_values"].tolist())}
            if stats.get("malformed", 0):
                warnings.warn(f"{folder}: skipped {stats['malformed']} malformed file name(s)", stacklevel=2)
            hashes = cached["hashes"].astype(str)
            return UtkData(cached["images"], cached["ages"], cached["genders"], cached["races"],
                           make_split(hashes, seed), cached["names"].astype(str), hashes, folder, stats)

    scan = scan_folder(folder)
    if not scan.records:
        raise DataFormatError(f"{folder}: no usable images after skipping malformed names and conflicts")
    images = np.stack([resize_face(read_rgb(r.path), cfg) for r in scan.records])
    ages = np.asarray([r.age for r in scan.records], dtype=np.int64)
    genders = np.asarray([r.gender for r in scan.records], dtype=np.int64)
    races = np.asarray([r.race for r in scan.records], dtype=np.int64)
    names = np.asarray([r.path.name for r in scan.records])
    hashes = np.asarray(scan.hashes)
    stats = {"files": scan.n_files, "malformed": len(scan.malformed), "duplicates_removed": scan.n_duplicates_removed,
             "conflicting_dropped": scan.n_conflicting_dropped, "kept": len(scan.records)}
    if cache_file is not None:
        save_npz(cache_file, images=images, ages=ages, genders=genders, races=races, names=names,
                 hashes=hashes, stat_keys=np.asarray(list(stats)), stat_values=np.asarray(list(stats.values())))
    return UtkData(images, ages, genders, races, make_split(hashes, seed), names, hashes, folder, stats)
