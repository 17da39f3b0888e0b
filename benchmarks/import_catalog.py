"""Benchmark: import the full fashion catalog (44,446 rows, 44,072 images) and the grocery catalog, twice each
(the second import must give the same content hash and a byte-identical catalog.parquet), and time
`load_image` on the imported images.

    python benchmarks/import_catalog.py [--presets fashion-product-images-small grocery-store-dataset]
                                        [--workers N] [--work runs/bench/import_catalog]

Writes benchmarks/results/import_catalog.json and .md, stamped with the date, the machine and its load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import time
from pathlib import Path

from dashclip.data.catalog import Catalog
from dashclip.data.images import load_image
from dashclip.data.importer import import_catalog
from dashclip.io import write_json, write_text

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

RESULTS = Path(__file__).resolve().parent / "results"




def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform()}


def bench_preset(preset: str, work: Path, workers: int | None) -> dict:
    runs = []
    for attempt in (1, 2):
        out = work / f"{preset}-{attempt}"
        shutil.rmtree(out, ignore_errors=True)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        result = import_catalog(preset, out=out, workers=workers)
        seconds = time.perf_counter() - t0
        r = result.report
        images = result.manifest["counts"]["images"]
        runs.append({"attempt": attempt, "seconds": round(seconds, 2),
                     "products_per_second": round(r.products / seconds, 1),
                     "images_per_second": round(images / seconds, 1),
                     "loadavg_before": [round(x, 2) for x in load_before],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                     "content_hash": result.content_hash})
        print(f"{preset} import {attempt}: {seconds:.2f} s, {r.products / seconds:,.0f} products/s, "
              f"{images / seconds:,.0f} images/s (load {load_before[0]:.2f})", flush=True)
    first, second = work / f"{preset}-1", work / f"{preset}-2"
    identical = all((first / f).read_bytes() == (second / f).read_bytes()
                    for f in ("catalog.parquet", "images.parquet", "manifest.json"))
    report = result.report.to_dict(first=5)
    report_md = (second / "report.md").read_text()

    # load_image throughput on the imported images (what training and serving pay per image).
    cat = Catalog.open(second)
    paths = [cat.image_path(p) for p in cat.images["image"].tolist()[:3000]]
    t0 = time.perf_counter()
    for p in paths:
        load_image(p)
    load_seconds = time.perf_counter() - t0
    return {"preset": preset, "rows_read": report["rows_read"], "products": report["products"],
            "products_with_image": report["products_with_image"], "images": result.manifest["counts"]["images"],
            "problem_counts": report["counts"], "runs": runs,
            "reimport_identical": identical and runs[0]["content_hash"] == runs[1]["content_hash"],
            "load_image": {"images": len(paths), "seconds": round(load_seconds, 3),
                           "images_per_second": round(len(paths) / load_seconds, 1)},
            "report": report, "report_md": report_md}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["fashion-product-images-small", "grocery-store-dataset"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/import_catalog"))
    ap.add_argument("--keep", action="store_true", help="keep the imported catalogs")
    args = ap.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    results = [bench_preset(p, args.work, args.workers) for p in args.presets]
    doc = {"benchmark": "import_catalog", "date_utc": started.isoformat(timespec="seconds"),
           "machine": machine(), "workers": args.workers or min(16, 2 * (os.cpu_count() or 2)),
           "note": "each preset imported twice from scratch; products/s counts every step (read, validate, "
                   "copy images, write parquet); load average recorded around each run",
           "results": [{k: v for k, v in r.items() if k != "report_md"} for r in results]}
    write_json(RESULTS / "import_catalog.json", doc)

    m = doc["machine"]
    lines = ["# Catalog import benchmark", "",
             f"Run {doc['date_utc']} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
             f"{doc['workers']} image threads. Produced by `python benchmarks/import_catalog.py`.", "",
             "| preset | products | with image | images | run | seconds | products/s | images/s | load avg (1 min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for run in r["runs"]:
            lines.append(f"| {r['preset']} | {r['products']:,} | {r['products_with_image']:,} | {r['images']:,} | "
                         f"{run['attempt']} | {run['seconds']} | {run['products_per_second']:,} | "
                         f"{run['images_per_second']:,} | {run['loadavg_before'][0]} |")
    lines.append("")
    for r in results:
        li = r["load_image"]
        lines.append(f"- {r['preset']}: re-import identical (catalog.parquet, images.parquet, manifest, content "
                     f"hash): **{r['reimport_identical']}**; `load_image` on {li['images']:,} imported images: "
                     f"{li['images_per_second']:,} images/s.")
    for r in results:
        lines += ["", "---", "", r["report_md"].replace("# Import report", "## Import report", 1)]
    write_text(RESULTS / "import_catalog.md", "\n".join(lines) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    print(f"wrote {RESULTS / 'import_catalog.json'} and .md")


if __name__ == "__main__":
    main()
