"""Grade many (query, product) pairs with any labeler: batched, written as Parquet shards, resumable.

A run directory holds:

    pairs.parquet          the pairs to grade, in order (fixed at the first run)
    plan.json              labeler, version, shard size and a hash of the pairs
    grades-00000.parquet   grades of pairs [0, shard_size), ... (schema: docs/architecture.md §4)
    failures-00000.parquet pairs the labeler could not grade, with the error and its raw answer
    grading.json           the summary of the last finished run

A shard is written atomically once all its pairs are graded, so a killed run loses at most the shard
in progress; re-running the same command skips finished shards, and no pair is graded twice.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..io import read_json, save_with, write_json
from .grades import GRADE_COLUMNS
from .labelers import Labeler, pairs_from

PAIRS_FILE, PLAN_FILE, SUMMARY_FILE = "pairs.parquet", "plan.json", "grading.json"
# Pairs handed to the labeler per call. Large, because the cross-encoder sorts each call's pairs by length
# into its own batches (less padding) and the LLM labeler runs a call's pairs concurrently.
PAIRS_PER_CALL = 1024


def shard_name(i: int, kind: str = "grades") -> str:
    return f"{kind}-{i:05d}.parquet"


def _pairs_hash(pairs: pd.DataFrame) -> str:
    h = pd.util.hash_pandas_object(pairs[["qid", "query", "product_id"]].astype(str), index=False)
    return hashlib.sha256(h.to_numpy().tobytes()).hexdigest()[:16]


def prepare_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and drop repeated (query, product) pairs: each pair is graded once."""
    missing = [c for c in ("qid", "query", "product_id") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs: missing column(s) {', '.join(missing)} (expected qid, query, product_id)")
    df = pairs[["qid", "query", "product_id"]].copy()
    df["qid"] = df["qid"].astype(str)
    df["query"] = df["query"].astype(str)
    blank = df["query"].str.strip() == ""
    if blank.any():
        raise ValueError(f"pairs: row {int(np.flatnonzero(blank.to_numpy())[0])}: field 'query' is empty")
    return df.drop_duplicates(["query", "product_id"]).reset_index(drop=True)


def grade_pairs(pairs: pd.DataFrame, catalog, labeler: Labeler, out_dir, shard_size: int = 4096,
                batch_size: int = PAIRS_PER_CALL, progress: Callable[[int], None] | None = None,
                max_shards: int | None = None) -> dict:
    """Grade `pairs` (qid, query, product_id) into shards under `out_dir`; resume a killed run.

    `progress(n)` is called after every batch with the number of pairs just graded (and once at the
    start with the number already done). `max_shards` stops after that many new shards (for tests
    and for spreading a long run over several sessions). Returns the summary (also grading.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / PLAN_FILE
    if plan_path.exists():  # resume: the pairs and the labeler must be the ones the run started with
        plan = read_json(plan_path)
        if plan.get("labeler") != labeler.name or plan.get("labeler_version") != labeler.version:
            raise ValueError(f"{out_dir}: holds grades from labeler {plan.get('labeler')} "
                             f"{plan.get('labeler_version')}, not {labeler.name} {labeler.version}; "
                             f"use a new --out dir")
        pairs = pd.read_parquet(out_dir / PAIRS_FILE)
        shard_size = int(plan["shard_size"])
    else:
        pairs = prepare_pairs(pairs)
        if pairs.empty:
            raise ValueError("no pairs to grade")
        save_with(out_dir / PAIRS_FILE, lambda p: pairs.to_parquet(p, index=False))
        plan = {"labeler": labeler.name, "labeler_version": labeler.version, "pairs": int(len(pairs)),
                "shard_size": int(shard_size), "pairs_sha256": _pairs_hash(pairs)}
        write_json(plan_path, plan)
    if _pairs_hash(pairs) != plan["pairs_sha256"]:
        raise ValueError(f"{out_dir}/{PAIRS_FILE} does not match {PLAN_FILE} (edited by hand?); use a new --out dir")
    n_shards = -(-len(pairs) // shard_size)
    todo = [i for i in range(n_shards) if not (out_dir / shard_name(i)).exists()]
    if progress is not None:
        progress(len(pairs) - sum(min(shard_size, len(pairs) - i * shard_size) for i in todo))
    t0, graded, failed, new = time.time(), 0, 0, 0
    for i in todo:
        if max_shards is not None and new >= max_shards:
            break
        shard = pairs.iloc[i * shard_size:(i + 1) * shard_size].reset_index(drop=True)
        results = []
        for b in range(0, len(shard), batch_size):
            batch = shard.iloc[b:b + batch_size]
            results.extend(labeler.grade(pairs_from(catalog, batch["query"].tolist(), batch["product_id"].tolist())))
            if progress is not None:
                progress(len(batch))
        if len(results) != len(shard):
            raise RuntimeError(f"labeler {labeler.name} returned {len(results)} grades for {len(shard)} pairs")
        ok = np.array([r.ok for r in results], dtype=bool)
        if (~ok).any():
            fails = shard[~ok].assign(error=[r.error for r, k in zip(results, ok) if not k],
                                      raw=[r.raw for r, k in zip(results, ok) if not k],
                                      labeler=labeler.name, labeler_version=labeler.version)
            save_with(out_dir / shard_name(i, "failures"), lambda p: fails.to_parquet(p, index=False))
        good = shard[ok].assign(grade=np.array([r.grade for r in results if r.ok], dtype=np.int8),
                                confidence=np.array([r.confidence for r in results if r.ok], dtype=np.float32),
                                labeler=labeler.name, labeler_version=labeler.version)
        save_with(out_dir / shard_name(i), lambda p: good[list(GRADE_COLUMNS)].to_parquet(p, index=False))
        graded += int(ok.sum())
        failed += int((~ok).sum())
        new += 1
    seconds = time.time() - t0
    done = sum((out_dir / shard_name(i)).exists() for i in range(n_shards))
    summary = {**plan, "shards": n_shards, "shards_done": done, "complete": done == n_shards,
               "this_run": {"shards": new, "graded": graded, "failed": failed, "seconds": round(seconds, 2),
                            "pairs_per_second": round((graded + failed) / seconds, 1) if seconds > 0 else None},
               "failures_total": int(sum(len(pd.read_parquet(f)) for f in sorted(out_dir.glob("failures-*.parquet"))))}
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
