"""The grade table (docs/architecture.md §4): reading, checking and splitting it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.ids import plain_id

from ..settings import is_heldout_qid

GRADE_COLUMNS = ("qid", "query", "product_id", "grade", "confidence", "labeler", "labeler_version")
GRADE_VALUES = (0, 1, 2)        # irrelevant, partial, exact: every grade file, human or model, in this scale
SHARD_GLOB = "grades-*.parquet"


def check_grades(df: pd.DataFrame, source: str = "grades", required: tuple = GRADE_COLUMNS) -> pd.DataFrame:
    """Raise a ValueError naming the source, row and field of the first bad value; return df typed.
    `required`: the columns that must be there (Stage 2 needs only qid, query, product_id, grade, confidence)."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)} (expected {', '.join(required)})")
    grade = pd.to_numeric(df["grade"], errors="coerce")
    bad = grade.isna() | ~grade.isin(GRADE_VALUES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: row {i}: field 'grade' is {plain_id(df['grade'].iloc[i])!r}, expected 0, 1 or 2")
    conf = pd.to_numeric(df["confidence"], errors="coerce")
    bad = conf.isna() | (conf < 0) | (conf > 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: row {i}: field 'confidence' is {plain_id(df['confidence'].iloc[i])!r}, "
                         f"expected a number in [0, 1]")
    bad = df["query"].isna() | (df["query"].astype(str).str.strip() == "")
    if bad.any():
        raise ValueError(f"{source}: row {int(np.flatnonzero(bad.to_numpy())[0])}: field 'query' is empty")
    out = df.copy()
    out["qid"] = out["qid"].astype(str)
    out["grade"] = grade.astype(np.int8)
    out["confidence"] = conf.astype(np.float32)
    return out


def grade_files(path: str | Path) -> list[Path]:
    """A Parquet file itself, or the grade shards of a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob(SHARD_GLOB))
        if not files:
            files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith(("failures-", "pairs")))
        if not files:
            raise FileNotFoundError(f"{path}: no grade shards ({SHARD_GLOB})")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such grade file or directory")
    return [path]


def load_grades(paths, min_confidence: float = 0.0) -> pd.DataFrame:
    """All grades from Parquet files and/or shard directories, checked, with confidence >= min_confidence.

    `paths` is one path or a list of them (seed grades and model grades can be read together)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for p in paths:
        for f in grade_files(p):
            frames.append(check_grades(pd.read_parquet(f), source=str(f)))
    if not frames:
        raise ValueError("no grade files given")
    df = pd.concat(frames, ignore_index=True)
    return df[df["confidence"] >= min_confidence].reset_index(drop=True)


def split_by_query(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out): a query is held out when its qid number is divisible by 3 (settings.is_heldout_qid)."""
    held = df["qid"].map(is_heldout_qid).astype(bool)
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
