"""Re-ranking measured: a cross-encoder over the first stage's top N, for quality and for added latency.

Reads a finished `dashclip train` output dir (default runs/homedepot: run `benchmarks/homedepot.py` first), whose
labels/labeler is the cross-encoder the pipeline fine-tuned on the human train grades. Scores the evaluation-only
grades (labels/eval.parquet) through `Searcher.search_batch` with the index's default first stage and each
re-ranking depth, with the metrics of the shop's README (NDCG@10 and MRR judged, Recall@100 over the catalog),
then times single queries one at a time (p50, p90) with and without re-ranking.

    python benchmarks/rerank.py [--run runs/homedepot] [--depths 10 20 40] [--latency-queries 200]

Writes benchmarks/results/rerank_<run name>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "homedepot")
    ap.add_argument("--depths", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args(argv)

    import pandas as pd

    from _machine import commit, cpu_model
    from dashclip.evaluation.metrics import evaluate_judged
    from dashclip.io import write_json, write_text
    from dashclip.labeling.rerank import CrossEncoderReranker
    from dashclip.serving.search import Searcher

    run = args.run
    labeler = run / "labels" / "labeler"
    if not labeler.is_dir():
        raise SystemExit(f"{labeler}: no fine-tuned labeler (run `dashclip train` with the cross-encoder labeler first)")
    results = args.results or RESULTS / f"rerank_{run.name}.json"
    started, load_start = datetime.now(timezone.utc), os.getloadavg()[0]

    dev = pd.read_parquet(run / "labels" / "eval.parquet")
    queries = dev.drop_duplicates("qid")[["qid", "query"]]
    qids, texts = [str(q) for q in queries["qid"]], queries["query"].tolist()
    judged = {str(qid): dict(zip(g["product_id"].tolist(), g["grade"].astype(int).tolist()))
              for qid, g in dev.groupby("qid")}

    searcher = Searcher.open(run / "model", run / "index")
    systems = {}

    def score(name: str, depth: int | None) -> None:
        if depth:
            searcher.reranker = CrossEncoderReranker(labeler, depth)
        t = time.time()
        hits = searcher.search_batch(texts, k=100, rerank=bool(depth))
        seconds = time.time() - t
        rankings = {qid: [h.id for h in hs] for qid, hs in zip(qids, hits)}
        m = evaluate_judged(rankings, judged)["overall"]
        systems[name] = {"depth": depth or 0, "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in m.items()}}
        log(f"{name}: NDCG@10 {m['ndcg@10']:.4f} Recall@100 {m['recall@100']:.4f} MRR {m['mrr']:.4f} ({seconds:.0f} s)")

    first = "hybrid (BM25 + vectors)" if searcher.default_hybrid else "vectors"
    score(f"first stage: {first}", None)
    for d in args.depths:
        score(f"{first}, re-ranked top {d}", d)

    # Latency: one query at a time, as a shopper's request arrives; the first stage's and the re-ranker's cost.
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(args.latency_queries, len(texts)), replace=False)]
    latency = {}
    for depth in [0] + list(args.depths):
        if depth:
            searcher.reranker = CrossEncoderReranker(labeler, depth)
        searcher.search(sample[0], k=10, rerank=bool(depth))   # warm-up
        ms = []
        for q in sample:
            t = time.perf_counter()
            searcher.search(q, k=10, rerank=bool(depth))
            ms.append((time.perf_counter() - t) * 1000)
        latency[str(depth)] = {"p50_ms": round(float(np.percentile(ms, 50)), 1),
                               "p90_ms": round(float(np.percentile(ms, 90)), 1)}
        log(f"latency, re-rank depth {depth}: p50 {latency[str(depth)]['p50_ms']} ms, p90 {latency[str(depth)]['p90_ms']} ms")

    shown = lambda p: str(p.resolve().relative_to(REPO)) if p.resolve().is_relative_to(REPO) else str(p)
    record = {"benchmark": "rerank", "script": "benchmarks/rerank.py", "run": shown(run), "commit": commit(),
              "started_utc": started.isoformat(timespec="seconds"),
              "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "loadavg_start": load_start,
                          "loadavg_end": os.getloadavg()[0], "torch_threads": _threads()},
              "queries": len(texts), "reranker": shown(labeler), "systems": systems,
              "latency_queries": len(sample), "latency_ms": latency}
    write_json(results, record)
    write_text(results.with_suffix(".md"), markdown(record))
    log(f"wrote {results} and {results.with_suffix('.md')}")
    return 0


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Re-ranking with the shop's cross-encoder labeler (`{r['run']}`)", "",
             f"Script `{r['script']}`, commit {r['commit']}, run {r['started_utc']} - {r['finished_utc']} (UTC) on "
             f"{m['nproc']} x {m['cpu']} (load average at the start {m['loadavg_start']:.2f}, at the end "
             f"{m['loadavg_end']:.2f}; torch threads {m['torch_threads']}).", "",
             f"{r['queries']} evaluation-only queries, through `Searcher.search_batch(k=100)`; re-ranker "
             f"`{r['reranker']}` orders the first stage's top N by its expected grade (P1 + 2 P2).", "",
             "| system | NDCG@10 (judged) | Recall@100 | MRR (judged) | batch seconds |", "|---|---:|---:|---:|---:|"]
    for name, s in r["systems"].items():
        lines.append(f"| {name} | {s['ndcg@10']:.4f} | {s['recall@100']:.4f} | {s['mrr']:.4f} | {s['seconds']} |")
    lines += ["", f"Latency of one query at a time (k=10), {r['latency_queries']} queries:", "",
              "| re-rank depth | p50 ms | p90 ms |", "|---:|---:|---:|"]
    for d, v in r["latency_ms"].items():
        lines.append(f"| {d} | {v['p50_ms']} | {v['p90_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
