"""A shop's files as they come: Home Depot rewritten in the shape of Wayfair's WANDS, through `dashclip train`.

WANDS (github.com/wayfair/WANDS) ships tab-separated files named .csv, grades written Exact / Partial /
Irrelevant, and a label file that names queries by id, with their texts in query.csv. Its product and label
files are not in ../shared/data (wands-queries/SOURCE.md), so this script writes Home Depot's data in that
shape and runs `dashclip train` on it with `[grades] queries`, `grade_map` and no conversion by hand:

- product.csv: tab-separated, columns product_id, product_name, product_class, category_hierarchy,
  product_description, product_features (Home Depot has titles only; the other columns are empty);
- query.csv: tab-separated, query_id, query, query_class;
- label.csv: tab-separated, id, query_id, product_id, label (grade 2 -> Exact, 1 -> Partial, 0 -> Irrelevant).

A seeded subset keeps it under 20 minutes on 2 cores: `--train-queries` of train_grades.csv's queries and
`--dev-queries` of dev_grades.csv's, every product they grade plus `--extra-products` others. As WANDS has no
split, a fifth of the queries (by a hash, `eval_fraction = 0.2`) are evaluation-only.

Writes benchmarks/results/wands_shaped.json and .md: the files' sizes, what the pipeline read and kept, seconds
per step and the evaluation report's systems.

Usage: python benchmarks/wands_shaped.py [--work runs/wands-shaped] [--fresh]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import commit, cpu_model  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LABELS = {"2": "Exact", "1": "Partial", "0": "Irrelevant"}

TOML = '''name = "wands-shaped"
out = "{out}"

[catalog]
source = "product.csv"              # tab-separated, though named .csv
id = "product_id"
title = "product_name"
category = "product_class"
attrs = ["category_hierarchy"]
text = ["product_description"]

[queries]
log = "query.csv"

[grades]
train = "label.csv"
eval_fraction = 0.2
queries = "query.csv"               # label.csv names queries by id
query_id_column = "query_id"
grade_column = "label"
grade_map = {{ Exact = 2, Partial = 1, Irrelevant = 0 }}

[labeler]
epochs = 1
max_pairs = 8000

[eval]
hybrid = true
'''


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def write_files(work: Path, n_train: int, n_dev: int, n_extra: int, seed: int = 0) -> dict:
    """The WANDS-shaped files in `work`/files (see the module doc); returns their counts."""
    import numpy as np
    import pandas as pd

    from dashclip.settings import dataset_dir

    src = dataset_dir("homedepot-search")
    products = pd.read_csv(src / "products.csv", dtype=str, keep_default_na=False)
    train = pd.read_csv(src / "train_grades.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(src / "dev_grades.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    grades = pd.concat([train[train["qid"].isin(rng.choice(train["qid"].unique(), n_train, replace=False))],
                        dev[dev["qid"].isin(rng.choice(dev["qid"].unique(), n_dev, replace=False))]])
    keep = set(grades["product_id"]) | set(rng.choice(products["product_id"], n_extra, replace=False))
    product = products[products["product_id"].isin(keep)].rename(columns={"title": "product_name"})
    for column in ("product_class", "category_hierarchy", "product_description", "product_features"):
        product[column] = ""
    queries = grades.drop_duplicates("qid")[["qid", "query"]].reset_index(drop=True)
    queries["query_id"], queries["query_class"] = np.arange(len(queries)), ""
    labels = grades.merge(queries[["qid", "query_id"]], on="qid")
    labels["label"], labels["id"] = labels["grade"].map(LABELS), np.arange(len(labels))
    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    product.to_csv(files / "product.csv", sep="\t", index=False)
    queries[["query_id", "query", "query_class"]].to_csv(files / "query.csv", sep="\t", index=False)
    labels[["id", "query_id", "product_id", "label"]].to_csv(files / "label.csv", sep="\t", index=False)
    (files / "wands.toml").write_text(TOML.format(out=(work / "out").as_posix()))
    return {"products": len(product), "queries": len(queries), "labels": len(labels),
            "labels_by_value": labels["label"].value_counts().to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "wands-shaped")
    ap.add_argument("--train-queries", type=int, default=600)
    ap.add_argument("--dev-queries", type=int, default=150)
    ap.add_argument("--extra-products", type=int, default=8000)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS / "wands_shaped.json")
    args = ap.parse_args(argv)

    from dashclip.io import write_json, write_text
    from dashclip.pipeline.config import load_config
    from dashclip.pipeline.steps import run_pipeline

    started, load_start = datetime.now(timezone.utc), os.getloadavg()[0]
    files = write_files(args.work, args.train_queries, args.dev_queries, args.extra_products)
    log(f"wrote {files['products']} products, {files['queries']} queries, {files['labels']} labels")
    t0 = time.time()
    r = run_pipeline(load_config(args.work / "files" / "wands.toml"), fresh=args.fresh, log=log)
    steps = r.record["steps"]
    record = {"benchmark": "wands_shaped", "script": "benchmarks/wands_shaped.py", "commit": commit(),
              "started_utc": started.isoformat(timespec="seconds"),
              "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "loadavg_start": load_start,
                          "loadavg_end": os.getloadavg()[0]},
              "args": {k: str(v) for k, v in vars(args).items()}, "files": files,
              "import": steps["import"], "human": steps["labels"].get("human"),
              "seconds_per_step": {k: v["seconds"] for k, v in steps.items()},
              "pipeline_seconds_this_run": round(time.time() - t0, 1),
              "systems": steps["eval"]["headline"], "shipped": steps["eval"].get("shipped"),
              "default_search": steps["eval"].get("default_search")}
    write_json(args.results, record)
    write_text(args.results.with_suffix(".md"), markdown(record))
    log(f"wrote {args.results} and {args.results.with_suffix('.md')}")
    return 0


def markdown(r: dict) -> str:
    human, files = r["human"] or {}, r["files"]
    lines = ["# A shop's files as they come: Home Depot in the shape of WANDS (`benchmarks/wands_shaped.py`)", "",
             f"Commit {r['commit']}, run {r['started_utc']} - {r['finished_utc']} (UTC) on {r['machine']['nproc']} x "
             f"{r['machine']['cpu']} (load average at the start {r['machine']['loadavg_start']:.2f}, at the end "
             f"{r['machine']['loadavg_end']:.2f}).", "",
             "The files: tab-separated though named .csv; grades written "
             f"{', '.join(f'{k} ({v})' for k, v in files['labels_by_value'].items())}; label.csv names queries by "
             f"id. {files['products']} products, {files['queries']} queries, {files['labels']} labels. Read by "
             "`dashclip train` with `[grades] queries`, `query_id_column`, `grade_map`: no conversion by hand.", "",
             f"- Import: {r['import']['products']} products, {r['import']['rows_dropped']} rows dropped.",
             f"- Label rows read {human.get('train', {}).get('rows')}, kept "
             f"{human.get('train', {}).get('rows_kept')} (unknown products "
             f"{human.get('train', {}).get('unknown_product_rows')}); evaluation-only (a fifth of the queries, by a "
             f"hash): {human.get('eval', {}).get('rows_kept')} rows of {human.get('eval_queries')} queries.",
             f"- Shipped: {r['shipped']}.", "",
             "| system (evaluation-only queries) | NDCG@10 (judged) | Recall@100 | MRR (judged) |",
             "|---|---:|---:|---:|"]
    for name, m in r["systems"].items():
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr']:.4f} |")
    total = sum(r["seconds_per_step"].values())
    lines += ["", f"Seconds per step ({total / 60:.1f} min in all): "
              + ", ".join(f"{k} {v}" for k, v in r["seconds_per_step"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
