"""HNSW's efSearch tuned at build time on noisy copies of product vectors against tuned on real queries
(`index build --tune-queries`, the pipeline's index step): which efSearch each picks, and the recall@10 and
latency that setting gives queries the tuning never saw.

The product embeddings of a trained model (an embeddings dir's fused.npy) go into `HNSW<M>,Flat` twice through
`dashclip.index.build_index`: once tuned as an index without queries is, once on up to 1,000 of --tune-queries
(the shop's training queries; the demo's are labels/pool_pairs.parquet). Both are then searched with
--eval-queries (other queries, encoded by the same model): recall@10 against exact search, and p50 / p99 of
`VectorIndex.search`, one query at a time on one thread.

    python benchmarks/hnsw_tuning.py --model runs/demo/model --embeddings runs/demo/embeddings \\
        --tune-queries runs/demo/labels/pool_pairs.parquet [--eval-queries FILE ...] [--factory HNSW32,Flat]

Writes benchmarks/results/hnsw_tuning.{json,md} (--name).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from dashclip.settings import dataset_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--embeddings", type=Path, required=True)
    ap.add_argument("--tune-queries", type=Path, required=True)
    ap.add_argument("--eval-queries", type=Path, nargs="+",
                    default=[dataset_dir("fashion-queries") / "dev_queries.jsonl", REPO / "benchmarks" / "check_queries.jsonl"])
    ap.add_argument("--factory", default="HNSW32,Flat")
    ap.add_argument("--name", default="hnsw_tuning")
    args = ap.parse_args(argv)

    import faiss

    import dashclip
    from _machine import commit, cpu_model
    from dashclip.index import build_index
    from dashclip.index.catalog_index import query_sample_vectors
    from dashclip.index.faiss_index import exact_top_k, recall_at_k
    from dashclip.io import write_json, write_text
    from dashclip.labeling.queries import read_queries
    from dashclip.models.embeddings import load_embeddings

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model = dashclip.load(args.model)
    emb = load_embeddings(args.embeddings, model_id=model.model_id, kind="fused")
    vectors = np.ascontiguousarray(emb.vectors["fused"], dtype=np.float32)
    def texts(path: Path) -> list[str]:    # a pairs table (the pipeline's pool_pairs.parquet) repeats its queries
        return read_queries(path, unique_qids=False)["query"].astype(str).tolist()

    tune_texts = texts(args.tune_queries)
    eval_texts = sorted({q for f in args.eval_queries for q in texts(f)} - set(tune_texts))
    tune = query_sample_vectors(model, tune_texts)
    evaluation = query_sample_vectors(model, eval_texts, n=len(eval_texts))
    truth = exact_top_k(vectors, evaluation, 10)
    faiss.omp_set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for name, queries in (("noisy copies of product vectors", None), ("training queries", tune)):
            t0 = time.time()
            index = build_index(vectors, emb.ids, Path(work) / name.replace(" ", "-"), factory=args.factory,
                                tune_queries=queries)
            built = time.time() - t0
            found = index._index.search(evaluation, 10)[1]      # labels are row positions at build
            index.search(evaluation[:1], 10)
            ms = []
            for q in evaluation:
                t = time.perf_counter()
                index.search(q[None], 10)
                ms.append((time.perf_counter() - t) * 1000)
            rows[name] = {"ef_search": index.meta["ef_search"], "tuned_on": index.meta["ef_search_tuned_on"],
                          "recall_at_build": index.meta["ef_search_tuned_recall_at_10"],
                          "eval_recall_at_10": round(float(recall_at_k(found, truth)), 4),
                          "p50_ms": round(float(np.percentile(ms, 50)), 3),
                          "p99_ms": round(float(np.percentile(ms, 99)), 3), "build_seconds": round(built, 1)}
            print(name, rows[name], flush=True)
    record = {"benchmark": "hnsw_tuning", "script": "benchmarks/hnsw_tuning.py", "commit": commit(),
              "started_utc": started, "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "loadavg_end": round(os.getloadavg()[0], 2)},
              "model": str(args.model), "embeddings": str(args.embeddings), "products": len(vectors),
              "factory": args.factory, "tune_queries": {"file": str(args.tune_queries), "distinct": len(set(tune_texts)),
                                                        "used": len(tune)},
              "eval_queries": {"files": [str(f) for f in args.eval_queries], "n": len(eval_texts)}, "rows": rows}
    out = REPO / "benchmarks" / "results" / f"{args.name}.json"
    write_json(out, record)
    lines = [f"# HNSW efSearch tuned on noisy copies vs on training queries", "",
             f"Script `{record['script']}`, commit {record['commit']}, {started} - {record['finished_utc']} (UTC), "
             f"{os.cpu_count()} x {record['machine']['cpu']}. {len(vectors):,} product embeddings of "
             f"`{args.embeddings}` (model `{args.model}`), `{args.factory}`; tuned to recall@10 >= 0.95 at build "
             f"on each; evaluated on {len(eval_texts)} other queries ({', '.join(f.name for f in args.eval_queries)}"
             f", none among the {len(set(tune_texts))} training queries), exact search as truth, one thread, one "
             f"query at a time.", "",
             "| tuned on | efSearch | recall@10 at build | recall@10, other queries | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {r['tuned_on']} | {r['ef_search']} | {r['recall_at_build']} | {r['eval_recall_at_10']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
