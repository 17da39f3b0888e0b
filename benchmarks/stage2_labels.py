"""The Stage 2 benchmark's model grades, scaled: a labeler taught the vocabulary, a large synthesized pool, graded.

The demo grades 2,200 synthesized queries to fit 20 minutes. The paper's point is that labels at scale
pay for themselves, so the Stage 2 benchmark trains on a larger pool, made here from a demo work dir
(its imported catalog and its seed grades) with the labeling stage's own APIs, step by step as the
`dashclip labels` commands make it:

1. pool      --queries synthesized queries (seed 0; never a dev query or a query of the demo's pool) and
             their candidates: BM25 top 2, 6 products that fit the query's reading, 2 that nearly fit it, 1 random
2. lessons   600 synthesized queries graded by their readings (`labels train --reading-queries 600`),
             none of them a dev query, a seed query or a query of either pool
3. labeler   the cross-encoder, fine-tuned on the training seed grades + those lessons (skipped with --labeler)
4. grade     every candidate pair graded by the labeler (resumable shards: re-run to continue)
5. check     the grades that agree with their query's reading (`labels check`)

The steps are the pipeline's labels step (`dashclip.pipeline.steps.make_labels`, the demo's and
`dashclip train`'s), with these sizes: the pool is made first, and the lessons avoid it, every dev
query and the demo's pool. Each step's output is kept in --out and reused by a re-run, so a killed
run continues. Deterministic:
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
import json
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

    import dataclasses
    import shutil

    import pandas as pd

    from dashclip.io import write_json, write_text
    from dashclip.pipeline.config import fashion_config
    from dashclip.pipeline.steps import Run, make_labels
    from dashclip.labeling.queries import read_queries
    from dashclip.settings import dataset_dir
    from _machine import cpu_model

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for need in (args.demo / "catalog", args.demo / "labels" / "seed.parquet"):
        if not need.exists():
            raise SystemExit(f"{need}: missing; run `dashclip demo --work {args.demo}` first (its labels step)")
    record = {"benchmark": "stage2_labels", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model()}, "demo": str(args.demo), "out": str(out)}

    # The demo's labels step (pipeline/steps.py: make_labels), scaled: the demo's seed grades, a labeler
    # taught LESSON_QUERIES reading-graded queries, a pool of --queries synthesized queries.
    cfg = fashion_config()
    cfg = dataclasses.replace(
        cfg, labeler=dataclasses.replace(cfg.labeler, reading_queries=LESSON_QUERIES),
        labels=dataclasses.replace(cfg.labels, pool_queries=args.queries, pool_k_bm25=POOL["k_bm25"],
                                   pool_k_reading=POOL["k_reading"], pool_k_near=POOL["k_near"],
                                   pool_n_random=POOL["n_random"]))
    if not (out / "seed.parquet").exists():
        shutil.copyfile(args.demo / "labels" / "seed.parquet", out / "seed.parquet")
        write_json(out / "human.json", {"seed_rule": "fashion-queries", "from_demo": str(args.demo)})
    dev = read_queries(dataset_dir("fashion-queries") / "dev_queries.jsonl")
    demo_pool = args.demo / "labels" / "pool.parquet"
    demo_pool_queries = pd.read_parquet(demo_pool)["query"].tolist() if demo_pool.exists() else []
    run = Run(out, cfg, "stage2_labels", log, "stage2_labels.json")
    facts = make_labels(run, args.demo / "catalog", out, labeler_dir=args.labeler,
                        exclude_more=dev["query"].tolist() + demo_pool_queries)
    pool = pd.read_parquet(out / "pool.parquet")
    record.update(labeler=str(args.labeler or out / "labeler"),
                  labeler_heldout={"accuracy": facts["labeler_heldout_accuracy"],
                                   "kappa_quadratic": facts["labeler_heldout_kappa"]},
                  lessons={"queries": LESSON_QUERIES},
                  pool={"queries": int(len(pool)), "styles": pool["style"].value_counts().to_dict(),
                        "pairs": facts["candidates"].get("pool_pairs"), "candidates": POOL},
                  grade={"pairs": facts["graded_pairs"], "pairs_per_second": facts["pairs_per_second"],
                         "graded_this_run": facts["pairs_per_second"] is not None},
                  check=json.loads((out / "checked.json").read_text()), seconds=facts["seconds_by_part"])
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(args.results, record)
    write_text(args.results.with_suffix(".md"), markdown(record))
    log(f"{record['check']['kept']} of {record['check']['pairs']} grades kept -> {out / 'checked.parquet'}; "
        f"wrote {args.results}")
    return 0


def markdown(r: dict) -> str:
    c = r["check"]
    lines = ["# Stage 2 benchmark labels", "",
             f"Run {r['started']} - {r['finished']} on {r['machine']['nproc']} x {r['machine']['cpu']}, "
             f"from the demo dir `{r['demo']}` into `{r['out']}`.", "",
             f"- Labeler `{r['labeler']}`: seed grades + the reading-graded pairs of "
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
