"""Milvus Lite against FAISS on the same product embeddings (issue 22 item 4): build time, recall@10 against
exact search, and single-query latency (p50, p99) through `VectorIndex.search`, one query at a time.

Reads an embeddings dir (e.g. `runs/scale/emb-200000` from `benchmarks/scale.py`) and encoded queries (its
`query_vectors.npy`). Milvus Lite is the embedded Milvus (a local file), built as `index build --backend milvus` builds it
(FLAT below 200,000 products, HNSW M=32 efConstruction=200 from there, efSearch 128); its row names the index
it was asked for. A Milvus cluster (`--uri http://HOST:19530`, see the README) is
measured the same way when one is reachable.

    python benchmarks/milvus_scale.py [--embeddings runs/scale/emb-200000] [--queries runs/scale/query_vectors.npy]
                                      [--uri http://HOST:19530]

Writes benchmarks/results/milvus_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", type=Path, default=REPO / "runs" / "scale" / "emb-200000")
    ap.add_argument("--queries", type=Path, default=REPO / "runs" / "scale" / "query_vectors.npy")
    ap.add_argument("--uri", default=None, help="a Milvus cluster to measure too (http://HOST:19530)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "milvus_scale")
    ap.add_argument("--name", default="milvus_scale")
    ap.add_argument("--milvus-queries", type=int, default=100, help="queries for the Milvus rows (Milvus Lite "
                    "scans 200K vectors in about 2 s a query on 2 cores; FAISS rows use them all)")
    args = ap.parse_args(argv)

    import faiss

    from _machine import commit, cpu_model
    from dashclip.index import build_index
    from dashclip.io import write_json, write_text
    from dashclip.models.embeddings import load_embeddings

    faiss.omp_set_num_threads(1)
    emb = load_embeddings(args.embeddings, mmap=False)
    vectors = np.ascontiguousarray(emb.vectors["fused"], dtype=np.float32)
    ids = emb.ids.tolist()
    queries = np.ascontiguousarray(np.load(args.queries), dtype=np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    truth_ids = [[ids[i] for i in row] for row in truth]
    record = {"benchmark": "milvus_scale", "script": "benchmarks/milvus_scale.py", "commit": commit(),
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "loadavg_start": round(os.getloadavg()[0], 2)},
              "embeddings": str(args.embeddings), "n": len(ids), "dim": int(vectors.shape[1]),
              "queries": len(queries), "systems": {}}
    runs = [("FAISS exact (Flat)", "faiss", "Flat", None), ("FAISS HNSW32 (efSearch tuned at build)", "faiss", "HNSW32", None),
            ("Milvus Lite", "milvus", None, None)]
    if args.uri:
        runs.append((f"Milvus cluster HNSW ({args.uri})", "milvus", "HNSW", args.uri))
    for name, backend, factory, uri in runs:
        out = args.work / name.split()[0].lower() / (factory or "default")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        index = build_index(vectors, ids, out, {"benchmark": "milvus_scale"}, backend=backend, factory=factory, uri=uri)
        index.save()
        build = time.perf_counter() - t0
        if backend == "milvus":
            name = f"{name} ({index.meta['factory']}, {index.meta.get('hnsw') or ''} ef {index.meta.get('ef_search')})"
        index.search(queries[:1], 10)
        got, ms = [], []
        n_q = len(queries) if backend == "faiss" else min(args.milvus_queries, len(queries))
        for q in queries[:n_q]:
            t = time.perf_counter()
            found, _ = index.search(q[None], 10)
            ms.append((time.perf_counter() - t) * 1000)
            got.append(list(found[0]))
        recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth_ids)]))
        record["systems"][name] = {"build_seconds": round(build, 1), "queries": n_q, "recall@10": round(recall, 4),
                                   "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                   "p99_ms": round(float(np.percentile(ms, 99)), 2),
                                   "loadavg": round(os.getloadavg()[0], 2)}
        print(name, record["systems"][name], flush=True)
        del index
    record["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    results = RESULTS / f"{args.name}.json"
    write_json(results, record)
    write_text(results.with_suffix(".md"), markdown(record))
    print(f"wrote {results}")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Milvus Lite and FAISS on the same {r['n']:,} product embeddings", "",
             f"Script `{r['script']}`, commit {r['commit']}, run {r['started_utc']} - {r['finished_utc']} (UTC) on "
             f"{m['nproc']} x {m['cpu']} (load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the "
             f"end). Embeddings `{r['embeddings']}` ({r['dim']}-d), {r['queries']} encoded queries, one at a time "
             f"through `VectorIndex.search` (k=10; FAISS on one thread); recall@10 against exact inner-product search.",
             "", "| index | build s (incl. save) | queries | recall@10 | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in r["systems"].items():
        lines.append(f"| {name} | {s['build_seconds']} | {s['queries']} | {s['recall@10']} | {s['p50_ms']} | {s['p99_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
