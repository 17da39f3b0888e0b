"""Grocery photo search: Stage 1 settings chosen on the validation photos, the test photos reported for all.

    python benchmarks/photo_grocery_sweep.py [--work runs/exp] [--variants 96:3 224:3 224:6]

Issue 20's grocery target (fine top-1 >= 0.65, top-5 >= 0.92 on the test split's in-store photos) was measured
with one Stage 1 setting (3 epochs at the default config's 224 px: photo_search.md). Trying settings against the
test photos would tune on the figure that is reported, so each variant (`IMAGE_SIZE:EPOCHS`, frozen cached image
tower, image -> product term 1.0) is scored on the 296 validation photos first; the variant with the best validation fine top-1 (fused product
embedding, the one the index serves) is the chosen one, and every variant's test figures are written beside it.

Writes benchmarks/results/photo_grocery_sweep.{json,md}, stamped with the script, commit, date and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import _machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EMBEDDINGS = ("fused", "text", "image")


def run_variant(catalog, work: Path, image_size: int, epochs: int, weight: float) -> tuple[Path, dict]:
    from dashclip.evaluation.grocery import pretrain_on_split
    from dashclip.io import read_json

    run = work / f"grocery-{image_size}px-{epochs}ep-ip{weight:g}"
    t = time.time()
    model_dir = pretrain_on_split(catalog, run, epochs=epochs, image_size=image_size,
                                  image_product_weight=weight, progress=False,
                                  cache_dir=str(work / f"../cache/grocery-train-{image_size}"))
    cfg = read_json(run / "pretrain_config.json")
    return model_dir, {"run": str(run), "image_size": image_size, "epochs": epochs, "image_product_weight": weight,
                       "batch_size": cfg["batch_size"], "train_pairs": cfg["split"]["train_pairs"],
                       "seconds_incl_reused_training": round(time.time() - t, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/exp")
    p.add_argument("--catalog", default="runs/catalogs/grocery",
                   help="made by: dashclip catalog import grocery-store-dataset --out runs/catalogs/grocery")
    p.add_argument("--variants", nargs="+", default=["96:3", "224:3", "224:6"], help="IMAGE_SIZE:EPOCHS")
    p.add_argument("--image-product-weight", type=float, default=1.0)
    args = p.parse_args()

    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.evaluation.evaluators import GroceryEvaluator
    from dashclip.io import write_json, write_text

    catalog = Catalog.open(args.catalog)
    work = Path(args.work)
    record = {"script": "benchmarks/photo_grocery_sweep.py", "commit": _machine.commit(),
              "machine": _machine.cpu_model() + f", {os.cpu_count()} cores",
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_at_start": round(os.getloadavg()[0], 2), "args": vars(args), "variants": []}
    for spec in args.variants:
        size, epochs = (int(x) for x in spec.split(":"))
        model_dir, row = run_variant(catalog, work, size, epochs, args.image_product_weight)
        model = dashclip.load(model_dir)
        for split in ("val", "test"):
            ev = GroceryEvaluator(catalog, split=split,
                                  feature_cache_dir=str(work / f"../cache/grocery-{split}-{size}"))
            row[split] = ev(model)
        print(spec, {s: row[s]["fused"] for s in ("val", "test")}, flush=True)
        record["variants"].append(row)
    best = max(record["variants"], key=lambda r: r["val"]["fused"]["fine_top1"])
    record["chosen"] = {"image_size": best["image_size"], "epochs": best["epochs"],
                        "rule": "best validation fine top-1, fused product embedding"}
    record["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_json(RESULTS / "photo_grocery_sweep.json", record)
    write_text(RESULTS / "photo_grocery_sweep.md", markdown(record))


def markdown(r: dict) -> str:
    lines = ["# Grocery photo search: Stage 1 settings chosen on the validation photos", "",
             f"`{r['script']}`, commit {r['commit']}, {r['date']} to {r['finished']}, {r['machine']} "
             f"(load average at start {r['load_at_start']}). Frozen cached image tower (EfficientNet-Lite0), "
             f"image -> product term {r['args']['image_product_weight']:g}; each in-store photo of the split is a "
             "query against the 81 products. Chosen on validation (296 photos) by fine top-1 of the fused "
             f"embedding: **{r['chosen']['image_size']} px, {r['chosen']['epochs']} epochs**; test (2,485 photos) "
             "reported for every variant.", "",
             "| px | epochs | embedding | val fine top-1 | val fine top-5 | test fine top-1 | test fine top-5 | "
             "test coarse top-1 | test coarse top-5 |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for v in r["variants"]:
        for e in EMBEDDINGS:
            va, te = v["val"][e], v["test"][e]
            mark = " (chosen)" if (v["image_size"], v["epochs"]) == (r["chosen"]["image_size"],
                                                                       r["chosen"]["epochs"]) else ""
            lines.append(f"| {v['image_size']} | {v['epochs']}{mark} | {e} | {va['fine_top1']:.3f} | "
                         f"{va['fine_top5']:.3f} | {te['fine_top1']:.3f} | {te['fine_top5']:.3f} | "
                         f"{te['coarse_top1']:.3f} | {te['coarse_top5']:.3f} |")
    chosen = next(v for v in r["variants"] if (v["image_size"], v["epochs"]) ==
                  (r["chosen"]["image_size"], r["chosen"]["epochs"]))
    t = chosen["test"]["fused"]
    lines += ["", f"Targets (issue 20, fused, after Stage 1): fine top-1 >= 0.65: **{t['fine_top1']:.3f}** "
              f"({'met' if t['fine_top1'] >= 0.65 else 'missed'}); top-5 >= 0.92: **{t['fine_top5']:.3f}** "
              f"({'met' if t['fine_top5'] >= 0.92 else 'missed'})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
