"""The Stage 2 benchmark's model grades, scaled: a labeler taught the vocabulary, a large synthesized pool, graded.

The demo grades 2,200 synthesized queries to fit 20 minutes. The paper's point is that labels at scale
pay for themselves, so the Stage 2 benchmark trains on a larger pool, made here from a demo work dir
(its imported catalog and its seed grades) with the labeling stage's own APIs, step by step as the
`dashclip labels` commands make it:

1. lessons   600 synthesized queries graded by their readings (`labels train --reading-queries 600`),
             none of them a held-out dev query, a seed query or a query of the demo's pool
2. labeler   the cross-encoder, fine-tuned on the training seed grades + those lessons (skipped with --labeler)
3. pool      --queries synthesized queries (seed 0; never a held-out dev query or a lesson) and their
             candidates: BM25 top 2, 6 products that fit the query's reading, 2 that nearly fit it, 1 random
4. grade     every candidate pair graded by the labeler (resumable shards: re-run to continue)
5. check     the grades that agree with their query's reading (`labels check`)

Each step's output is kept in --out and reused by a re-run, so a killed run continues. Deterministic:
the same demo dir and arguments give the same pool; with the same labeler, the same grades.

Usage:
    python benchmarks/stage2_labels.py --demo runs/demo --out runs/bench_stage2/labels-6000 [--labeler DIR]
then
    python benchmarks/stage2_align.py ... --model-grades runs/bench_stage2/labels-6000/checked.parquet \
        --unchecked-grades runs/bench_stage2/labels-6000/grades --pool runs/bench_stage2/labels-6000/pool.parquet
Writes benchmarks/results/stage2_labels.json and .md (sizes, agreement with the readings, seconds per step).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LESSON_QUERIES, LESSON_SEED = 600, 7      # as `dashclip labels train --reading-queries 600` (its seed 0 + 7)
POOL = dict(k_bm25=2, k_dense=0, k_reading=6, k_near=2, n_random=1, seed=1)   # the demo's candidate mix


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "runs" / "demo",
                    help="a `dashclip demo` work dir: its catalog/, labels/seed.parquet and labels/pool.parquet")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_stage2" / "labels-6000")
    ap.add_argument("--queries", type=int, default=6000, help="synthesized queries in the pool")
    ap.add_argument("--labeler", type=Path, help="an already trained labeler dir (else one is trained into --out)")
    ap.add_argument("--results", type=Path, default=RESULTS / "stage2_labels.json")
    args = ap.parse_args(argv)

    import pandas as pd

    from dashclip.data.catalog import Catalog
    from dashclip.demo import heldout_queries
    from dashclip.io import save_with, write_json, write_text
    from dashclip.labeling import load_grades
    from dashclip.labeling.candidates import pick_candidates
    from dashclip.labeling.consistency import keep_consistent, reading_examples
    from dashclip.labeling.evaluate import evaluate_labeler
    from dashclip.labeling.grading import grade_pairs
    from dashclip.labeling.labelers.cross_encoder import CrossEncoderConfig, CrossEncoderLabeler, train_from_seed
    from dashclip.labeling.queries import read_queries, synthesize_queries
    from dashclip.labeling.vocabulary import Vocabulary
    from dashclip.settings import dataset_dir
    from dashclip.text import BM25
    from _machine import cpu_model

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for need in (args.demo / "catalog", args.demo / "labels" / "seed.parquet"):
        if not need.exists():
            raise SystemExit(f"{need}: missing; run `dashclip demo --work {args.demo}` first (its labels step)")
    record = {"benchmark": "stage2_labels", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model()}, "demo": str(args.demo), "out": str(out),
              "seconds": {}}
    t0 = time.time()

    def lap(name):
        nonlocal t0
        record["seconds"][name] = round(time.time() - t0, 1)
        t0 = time.time()

    catalog = Catalog.open(args.demo / "catalog")
    vocabulary = Vocabulary.load("fashion")
    bm25 = BM25(catalog.product_texts())
    seed = pd.read_parquet(args.demo / "labels" / "seed.parquet")
    dev = read_queries(dataset_dir("fashion-queries") / "dev_queries.jsonl")
    heldout = [q["query"] for q in heldout_queries()]
    demo_pool = args.demo / "labels" / "pool.parquet"
    demo_pool_queries = pd.read_parquet(demo_pool)["query"].tolist() if demo_pool.exists() else []

    # 1-2. The labeler. Its lessons avoid the demo's pool too, so the same labeler can grade either pool
    # without having been taught its queries.
    labeler_dir = args.labeler or out / "labeler"
    lessons = reading_examples(catalog, vocabulary, LESSON_QUERIES, seed=LESSON_SEED, bm25=bm25,
                               exclude=demo_pool_queries + dev["query"].tolist() + seed["query"].tolist())
    record["lessons"] = {"queries": int(lessons["qid"].nunique()), "pairs": int(len(lessons))}
    lap("lessons")
    if not (labeler_dir / "labeler.json").exists():
        log(f"training the labeler on the seed grades + {len(lessons)} reading-graded pairs -> {labeler_dir}")
        train_from_seed(seed, catalog, labeler_dir, vocabulary=vocabulary, extra=lessons,
                        config=CrossEncoderConfig(epochs=2, max_length=80, amp="auto"))
    record["labeler"] = str(labeler_dir)
    lap("labeler_train")
    labeler = CrossEncoderLabeler(labeler_dir, batch_size=128)
    quality = evaluate_labeler(labeler, seed, catalog, batch_size=128)     # on the held-out seed queries
    record["labeler_heldout"] = {k: round(quality[k], 4) for k in ("accuracy", "kappa_quadratic") if k in quality}
    lap("labeler_eval")

    # 3. The pool and its candidates.
    pool_path, pairs_path = out / "pool.parquet", out / "pool_pairs.parquet"
    if not pairs_path.exists():
        pool = synthesize_queries(catalog, n=args.queries, seed=0, vocabulary=vocabulary,
                                  exclude=heldout + lessons["query"].unique().tolist())
        pairs = pick_candidates(catalog, pool, bm25=bm25, **POOL)
        save_with(pool_path, lambda p: pool.to_parquet(p, index=False))
        save_with(pairs_path, lambda p: pairs.to_parquet(p, index=False))
    pool, pairs = pd.read_parquet(pool_path), pd.read_parquet(pairs_path)
    record["pool"] = {"queries": int(len(pool)), "styles": pool["style"].value_counts().to_dict(),
                      "pairs": int(len(pairs)), "candidates": POOL}
    lap("pool")

    # 4-5. Grade (resumable) and check.
    log(f"grading {len(pairs)} pairs of {len(pool)} queries -> {out / 'grades'}")
    summary = grade_pairs(pairs, catalog, labeler, out / "grades", shard_size=2048)
    if not summary["complete"]:
        raise SystemExit(f"grading stopped before the end ({summary['shards_done']}/{summary['shards']} shards); "
                         "re-run to continue")
    record["grade"] = {"pairs": int(summary["pairs"]), "graded_this_run": int(summary["this_run"]["graded"]),
                       "pairs_per_second": summary["this_run"]["pairs_per_second"]}
    lap("grade")
    kept, check = keep_consistent(load_grades(out / "grades"), pool, catalog)
    save_with(out / "checked.parquet", lambda p: kept.to_parquet(p, index=False))
    write_json(out / "checked.json", check)
    record["check"] = check
    lap("check")

    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(args.results, record)
    write_text(args.results.with_suffix(".md"), markdown(record))
    log(f"{check['kept']} of {check['pairs']} grades kept -> {out / 'checked.parquet'}; wrote {args.results}")
    return 0


def markdown(r: dict) -> str:
    c = r["check"]
    lines = ["# Stage 2 benchmark labels", "",
             f"Run {r['started']} - {r['finished']} on {r['machine']['nproc']} x {r['machine']['cpu']}, "
             f"from the demo dir `{r['demo']}` into `{r['out']}`.", "",
             f"- Labeler `{r['labeler']}`: seed grades + {r['lessons']['pairs']} reading-graded pairs of "
             f"{r['lessons']['queries']} synthesized queries; held-out seed accuracy "
             f"{r['labeler_heldout'].get('accuracy')}, quadratic kappa {r['labeler_heldout'].get('kappa_quadratic')}.",
             f"- Pool: {r['pool']['queries']} synthesized queries ({r['pool']['styles']}), "
             f"{r['pool']['pairs']} candidate pairs ({r['pool']['candidates']}).",
             f"- Graded {r['grade']['pairs']} pairs ("
             + (f"{r['grade']['pairs_per_second']} pairs/s" if r['grade']['graded_this_run'] else
                "all by an earlier run into the same dir, reused") + "); "
             f"kept {c['kept']} that agree with their query's reading (agreement {c['agreement']}).", "",
             "| style | pairs | agreement | kept grade 2 |", "|---|---:|---:|---:|"]
    lines += [f"| {s} | {v['pairs']} | {v['agreement']} | {v['kept_grade2']} |" for s, v in c["per_style"].items()]
    lines += ["", "Seconds per step: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
