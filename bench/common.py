"""What every benchmark shares: the machine's name, percentiles, writing results as JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from training.engine import cpu_name


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_results(results: dict, out: Path | None) -> None:
    """Save the results as JSON when ``--out`` was given."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
