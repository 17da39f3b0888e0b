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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..io import read_json, save_with, write_json
from .grades import GRADE_COLUMNS
from .labelers import Labeler, LabelerSpec, pairs_from

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
                max_shards: int | None = None, ray: "RayGrading | None" = None) -> dict:
    """Grade `pairs` (qid, query, product_id) into shards under `out_dir`; resume a killed run.

    `progress(n)` is called after every batch with the number of pairs just graded (and once at the
    start with the number already done). `max_shards` stops after that many new shards (for tests
    and for spreading a long run over several sessions). `ray`: the shards are graded by a pool of Ray
    actors (`dashclip.parallel`), each building the labeler from `ray.labeler` once; the shard files are
    the ones this process would write. Returns the summary (also grading.json)."""
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
    if max_shards is not None:
        todo = todo[:max_shards]
    t0 = time.time()
    if ray is not None:
        from functools import partial

        from ..parallel import map_shards

        results = map_shards(todo, partial(ShardGrader, ray.labeler, str(catalog.root), str(out_dir), batch_size),
                             workers=ray.workers, address=ray.address, threads_per_worker=ray.threads_per_worker,
                             on_result=(lambda r: progress(int(r["graded"]) + int(r["failed"])))
                             if progress is not None else None)
        graded, failed = sum(int(r["graded"]) for r in results), sum(int(r["failed"]) for r in results)
    else:
        graded = failed = 0
        for i in todo:
            g, f = grade_shard(pairs, i, shard_size, catalog, labeler, out_dir, batch_size, progress)
            graded, failed = graded + g, failed + f
    seconds = time.time() - t0
    done = sum((out_dir / shard_name(i)).exists() for i in range(n_shards))
    summary = {**plan, "shards": n_shards, "shards_done": done, "complete": done == n_shards,
               "this_run": {"shards": len(todo), "graded": graded, "failed": failed, "seconds": round(seconds, 2),
                            "pairs_per_second": round((graded + failed) / seconds, 1) if seconds > 0 else None,
                            **({"ray": {"workers": ray.workers, "address": ray.address or "local"}} if ray else {})},
               "failures_total": int(sum(len(pd.read_parquet(f)) for f in sorted(out_dir.glob("failures-*.parquet"))))}
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def grade_shard(pairs: pd.DataFrame, i: int, shard_size: int, catalog, labeler: Labeler, out_dir: Path,
                batch_size: int = PAIRS_PER_CALL, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Grade shard i of `pairs` and write it (and its failures) atomically: the unit of work and of
    resumption, in this process and on a Ray actor. Returns (graded, failed)."""
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
        save_with(Path(out_dir) / shard_name(i, "failures"), lambda p: fails.to_parquet(p, index=False))
    good = shard[ok].assign(grade=np.array([r.grade for r in results if r.ok], dtype=np.int8),
                            confidence=np.array([r.confidence for r in results if r.ok], dtype=np.float32),
                            labeler=labeler.name, labeler_version=labeler.version)
    save_with(Path(out_dir) / shard_name(i), lambda p: good[list(GRADE_COLUMNS)].to_parquet(p, index=False))
    return int(ok.sum()), int((~ok).sum())


@dataclass(frozen=True)
class RayGrading:
    """`grade_pairs` on Ray: how each actor builds the labeler, the pool size, the cluster (None: a local
    Ray), and each actor's CPU threads."""
    labeler: LabelerSpec
    workers: int = 2
    address: str | None = None
    threads_per_worker: int = 1


class ShardGrader:
    """A Ray actor's worker (`dashclip.parallel.map_shards`): builds the labeler, opens the catalog and reads
    the run's pairs once, then grades one shard per call."""

    def __init__(self, labeler: LabelerSpec, catalog_dir: str, out_dir: str, batch_size: int):
        from ..data.catalog import Catalog

        self.catalog = Catalog.open(catalog_dir)
        self.labeler = labeler.build()
        self.out_dir, self.batch_size = Path(out_dir), batch_size
        self.pairs = pd.read_parquet(self.out_dir / PAIRS_FILE)
        self.shard_size = int(read_json(self.out_dir / PLAN_FILE)["shard_size"])

    def __call__(self, i: int) -> dict:
        graded, failed = grade_shard(self.pairs, i, self.shard_size, self.catalog, self.labeler, self.out_dir,
                                     self.batch_size)
        return {"shard": i, "graded": graded, "failed": failed}
