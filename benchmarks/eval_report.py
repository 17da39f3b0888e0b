"""The `dashclip eval` reports behind benchmarks/results/eval_report.{json,md}, timed.

    python benchmarks/eval_report.py --model runs/bench/stage1/model [--embeddings DIR]
        [--grocery-model DIR] [--grocery-stage1-epochs 3] [--out runs/bench/eval] [--skip fashion|grocery]

Both parts call `dashclip.evaluation.report.run_eval`, the code behind `dashclip eval`:

- fashion (report in OUT/fashion): retrieval and relevance on the held-out fashion-queries (qid
  divisible by 3; --all-queries for all 120) over the whole catalog, BM25, MiniLM and the model
  side by side; aisle prediction; plots. The catalog is embedded with the model first
  (`embed_catalog`, resumable) unless --embeddings is given.
- grocery (report in OUT/grocery): in-store test photos against the 81 products, with the grocery
  model (default: --model) zero-shot and after Stage 1 on the grocery train photos (trained into
  OUT/grocery/grocery-stage1 with the grocery model's config, reused when there).

The parts may use different models (e.g. the grocery Stage 1 run starts from the towers a plain
`create_model` has, so its zero-shot row is that model); each report names its model.
Results: benchmarks/results/eval_report.json ({"fashion": metrics, "grocery": metrics, "benchmark"})
and .md (both reports, with their plots in eval_report_plots/), stamped with timings, machine and load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def ensure_catalog(path: Path, preset: str) -> Path:
    if not (path / "catalog.parquet").exists():
        from dashclip.data.importer import import_catalog

        log(f"importing {preset} into {path}")
        import_catalog(preset, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, default=REPO / "runs" / "catalogs" / "fashion")
    ap.add_argument("--embeddings", type=Path, help="default: OUT/embeddings-<model_id>, computed when missing")
    ap.add_argument("--all-queries", action="store_true", help="all 120 queries, not only the 40 held out")
    ap.add_argument("--grocery-model", type=Path, help="zero-shot model of the grocery part (default: --model)")
    ap.add_argument("--grocery-catalog", type=Path, default=REPO / "runs" / "catalogs" / "grocery")
    ap.add_argument("--grocery-stage1-epochs", type=int, default=3)
    ap.add_argument("--skip", choices=["fashion", "grocery"], action="append", default=[])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "eval")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "cache" / "eval")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--note", action="append", default=[], help="a line for the top of the .md (e.g. what the "
                    "catalog is when it is not the whole fashion catalog)")
    args = ap.parse_args(argv)

    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.evaluation.report import run_eval
    from dashclip.io import read_json, write_json, write_text
    from dashclip.models.embeddings import embed_catalog
    from dashclip.settings import dataset_dir

    t_all = time.perf_counter()
    timings, load = {}, {"start": round(os.getloadavg()[0], 2)}
    reports = {}
    if "fashion" not in args.skip:
        catalog = Catalog.open(ensure_catalog(args.catalog, "fashion-product-images-small"))
        model = dashclip.load(args.model)
        emb_dir = args.embeddings or args.out / f"embeddings-{model.model_id}"
        if not (emb_dir / "meta.json").exists():
            log(f"embedding {len(catalog):,} products into {emb_dir}")
            t0 = time.perf_counter()
            embed_catalog(model, catalog, emb_dir)
            timings["fashion: embed catalog"] = round(time.perf_counter() - t0, 1)
        del model  # run_eval loads it from the dir, as `dashclip eval` does
        log("fashion: run_eval")
        t0 = time.perf_counter()
        reports["fashion"] = run_eval(args.model, args.catalog, args.out / "fashion",
                                      queries_path=dataset_dir("fashion-queries") / "dev_queries.jsonl",
                                      embeddings_dir=emb_dir, heldout_only=not args.all_queries,
                                      cache_dir=args.cache_dir, log=log)
        timings["fashion: run_eval"] = round(time.perf_counter() - t0, 1)
        load["after fashion"] = round(os.getloadavg()[0], 2)
    if "grocery" not in args.skip:
        log("grocery: run_eval")
        t0 = time.perf_counter()
        reports["grocery"] = run_eval(args.grocery_model or args.model, None, args.out / "grocery",
                                      grocery_catalog_dir=ensure_catalog(args.grocery_catalog, "grocery-store-dataset"),
                                      grocery_stage1_epochs=args.grocery_stage1_epochs, cache_dir=args.cache_dir,
                                      log=log)
        timings["grocery: run_eval (incl. Stage 1 when not reused)"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    load["end"] = round(os.getloadavg()[0], 2)

    bench = {"command": " ".join(["python benchmarks/eval_report.py", *(argv or sys.argv[1:])]),
             "report_dirs": {k: str(args.out / k) for k in reports}, "timings_s": timings, "load_avg_1m": load}
    out = {"benchmark": bench}
    plots = args.results / "eval_report_plots"
    md = ["# dashclip eval: benchmark reports", "",
          f"`{bench['command']}`. Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
          + ". Load average (1 min): " + ", ".join(f"{k} {v}" for k, v in load.items()) + ".", "",
          *[f"**Note:** {n}\n" for n in args.note]]
    bench["notes"] = args.note
    for part, paths in reports.items():
        out[part] = read_json(paths["metrics"])
        (plots / part).mkdir(parents=True, exist_ok=True)
        for png in (args.out / part / "plots").glob("*.png"):
            shutil.copyfile(png, plots / part / png.name)
        text = Path(paths["markdown"]).read_text().replace("](plots/", f"](eval_report_plots/{part}/")
        md.append(text.replace("# dashclip evaluation report", f"# {part} report", 1))
    write_json(args.results / "eval_report.json", out)
    write_text(args.results / "eval_report.md", "\n".join(md))
    log(f"wrote {args.results / 'eval_report.json'} and .md")
    for name, row in reports.get("fashion", {}).get("headline", {}).items():
        print(f"{name:45s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
