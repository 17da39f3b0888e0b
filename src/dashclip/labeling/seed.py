"""Seed ("human") grades from a graded query file: what an annotator would produce by judging the top
candidates of each query. For each query, its candidates (candidates.pick_candidates) get the grade
the qrels give them (absent from the qrels = 0), with confidence 1.0."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .candidates import pick_candidates
from ..data.ids import plain_id
from ..data.tables import csv_delimiter
from .grades import GRADE_COLUMNS, GRADE_VALUES, check_grades

SEED_LABELER = "seed"


def read_qrels(path) -> pd.DataFrame:
    """qrels TSV/CSV with columns qid, product_id, label (or grade); label in 0/1/2."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such qrels file")
    sep = csv_delimiter(path, default="," if path.suffix.lower() == ".csv" else "\t")
    df = pd.read_csv(path, sep=sep, dtype={"qid": str})
    if "grade" in df.columns and "label" not in df.columns:
        df = df.rename(columns={"grade": "label"})
    missing = [c for c in ("qid", "product_id", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected qid, product_id, label)")
    bad = ~df["label"].isin(GRADE_VALUES)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: row {i + 2}: field 'label' is {plain_id(df['label'].iloc[i])!r}, expected 0, 1 or 2")
    return df


def seed_from_qrels(catalog, queries: pd.DataFrame, qrels: pd.DataFrame, version: str = "qrels",
                    **candidate_options) -> pd.DataFrame:
    """Seed grades (architecture §4 schema) for the candidates of each query (qid, query)."""
    cands = pick_candidates(catalog, queries, **candidate_options)
    q = qrels[["qid", "product_id", "label"]].copy()
    q["qid"] = q["qid"].astype(str)
    q["product_id"] = q["product_id"].map(catalog.coerce_id)
    cands = cands.merge(q, on=["qid", "product_id"], how="left")
    seed = pd.DataFrame({"qid": cands["qid"], "query": cands["query"], "product_id": cands["product_id"],
                         "grade": cands["label"].fillna(0).astype("int8"), "confidence": 1.0,
                         "labeler": SEED_LABELER, "labeler_version": version})
    return check_grades(seed[list(GRADE_COLUMNS)], source="seed grades")


def seed_from_labels_py(catalog, queries_path, labels_py=None, **candidate_options) -> pd.DataFrame:
    """Seed grades for the queries of a fashion-queries style file, graded by its labels.py (default:
    the one beside the file) over the dataset's own catalog; candidates as in `seed_from_qrels`."""
    from ..settings import load_labels_module

    queries_path = Path(queries_path)
    labels = load_labels_module(labels_py or queries_path.parent / "labels.py")
    reference = labels.load_catalog()
    queries = labels.load_queries(queries_path, reference)
    qdf = pd.DataFrame([{"qid": q["qid"], "query": q["query"]} for q in queries])
    return seed_from_qrels(catalog, qdf, labels.qrels(queries, reference),
                           version=f"{queries_path.parent.name}/labels.py", **candidate_options)
