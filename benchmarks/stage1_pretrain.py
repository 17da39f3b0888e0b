"""Stage 1 benchmark: does catalog pretraining help, on the whole fashion catalog?

    python benchmarks/stage1_pretrain.py --catalog runs/catalogs/fashion [--epochs 1 --image-size 96]

What it does (10% of products held out by id, image tower frozen and cached, as on a laptop CPU):
  1. caches the image tower's features for every image (timed: the one-time cost);
  2. "before Stage 1": the pretrained towers with untrained projections/fusion (the same seeded
     initialisation Stage 1 starts from);
  3. runs `pretrain` (ITC + ITM) on the training products, timed (pairs per second);
  4. "after Stage 1": the trained model;
and for 2 and 4 measures held-out text->image and image->text Recall@1/5/10 (one primary image per
held-out product among all held-out products) and the aisle (articleType) accuracy of a logistic
regression probe (and a 10-NN classifier) trained on train-product embeddings and scored on held-out
products, for the fused, image-only and text-only embeddings. The probe is `dashclip eval`'s
CategoryEvaluator, given Stage 1's held-out products as its test split.

Targets (issue #3): after/before text->image R@10 >= 3x; fused probe accuracy >= max(image, text).
Writes benchmarks/results/stage1_pretrain.json and .md, stamped with date, machine and load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"




class LoadSampler:
    """Samples the 1-minute load average every `every` seconds while the benchmark runs."""

    def __init__(self, every: float = 15.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = np.asarray(self.samples or [os.getloadavg()[0]])
        return {"min": round(float(s.min()), 2), "mean": round(float(s.mean()), 2),
                "max": round(float(s.max()), 2), "samples": len(s)}


def measure(model, pairs, images, train_rows, test_rows, labels, label_name, batch_size) -> dict:
    """Retrieval on held-out products, and the aisle probe (and kNN) of `dashclip eval`'s
    CategoryEvaluator for each embedding kind, trained on `train_rows` and scored on the held-out rows."""
    from dashclip.evaluation.evaluators import CategoryEvaluator
    from dashclip.models.embeddings import ProductEmbeddings
    from dashclip.training.pretrain import encode_products, retrieval_metrics

    t0 = time.time()
    test = encode_products(model, pairs, test_rows, images, batch_size)
    train = encode_products(model, pairs, train_rows, images, batch_size)
    encode_s = time.time() - t0
    out = {"retrieval": retrieval_metrics(test["text"], test["image"]), "probe_accuracy": {},
           "knn_accuracy": {}, "probe_macro_f1": {}, "encode_seconds": round(encode_s, 1)}
    t0 = time.time()
    rows = np.concatenate([train_rows, test_rows])
    emb = ProductEmbeddings(ids=rows, vectors={k: np.concatenate([train[k], test[k]]) for k in train}, meta={})
    evaluator = CategoryEvaluator(rows, {label_name: labels[rows]}, test_ids=test_rows.tolist(),
                                  max_train=len(train_rows))
    scores = evaluator(emb)
    for kind in ("fused", "image", "text"):
        s = scores[kind][label_name]
        out["probe_accuracy"][kind] = s["logreg"]["accuracy"]
        out["probe_macro_f1"][kind] = s["logreg"]["macro_f1"]
        out["knn_accuracy"][kind] = s["knn"]["accuracy"]
        print(f"  probe {kind}: {out['probe_accuracy'][kind]:.4f} (kNN {out['knn_accuracy'][kind]:.4f})", flush=True)
    out["probe_seconds"] = round(time.time() - t0, 1)
    return out


def finished_run(run: Path, cfg):
    """(model, TrainResult-like record) of a finished pretrain run, checked against this benchmark's split
    and image settings so that "after" is measured on products that run never trained on."""
    import types

    import dashclip
    from dashclip.io import read_json, read_jsonl

    settings = read_json(run / "pretrain_config.json")
    for key in ("heldout_frac", "seed", "image_size", "freeze_image", "amp"):
        if settings.get(key) != getattr(cfg, key):
            raise SystemExit(f"{run}: its {key} is {settings.get(key)!r}, this benchmark's {getattr(cfg, key)!r}")
    rows = list(read_jsonl(run / "metrics.jsonl"))
    train = [r for r in rows if r.get("kind") == "train"]
    speed = [r["pairs_per_s"] for r in train if "pairs_per_s" in r]
    steps = max((r["step"] for r in train), default=0)
    pairs_per_s = float(np.mean(speed)) if speed else None
    examples = steps * settings["batch_size"] * settings.get("accum_steps", 1)
    shown = ("epochs", "max_steps", "batch_size", "lr", "warmup_steps", "itc_weight", "itm_weight",
             "product_weight", "product_against", "text_lr_scale", "amp")
    for k in shown:
        cfg_value = settings.get(k)
        if cfg_value is not None:
            print(f"  trained run {k}: {cfg_value}", flush=True)
    tr = types.SimpleNamespace(step=steps, epoch=max((r.get("epoch", 0) for r in train), default=0),
                               examples=examples, seconds=examples / pairs_per_s if pairs_per_s else 0.0,
                               evals=[r for r in rows if r.get("kind") == "eval"], last=train[-1] if train else {},
                               run_dir=str(run), run_settings={k: settings.get(k) for k in shown})
    return dashclip.load(run / "model"), tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="runs/catalogs/fashion", help="imported fashion catalog dir")
    ap.add_argument("--out", default="runs/bench/stage1", help="run dir for the Stage 1 run")
    ap.add_argument("--config", default="default")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--heldout-frac", type=float, default=0.1)
    # Every training product by default: the probe's errors are in the rarest aisles (1-20 examples among
    # all training products), and an 8,000-product sample keeps a fifth of those, so it measured how the
    # probe copes with two examples of a class more than what the embedding holds.
    ap.add_argument("--probe-train-products", type=int, default=0,
                    help="train products the probe fits on (0: all of them; n: a seeded sample of n)")
    ap.add_argument("--label", default="articleType", help="catalog column the probe predicts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--amp", default="auto", help="precision of Stage 1 and the image-feature cache (auto: bf16 "
                                                 "where the CPU/GPU computes it natively)")
    ap.add_argument("--resume", action="store_true", help="resume the Stage 1 run in --out")
    ap.add_argument("--trained-run", default=None,
                    help="measure this finished `pretrain` run dir (e.g. runs/demo/stage1) instead of training "
                         "one: its model/, pretrain_config.json (settings and split) and metrics.jsonl (speed)")
    ap.add_argument("--results", type=Path, default=RESULTS / "stage1_pretrain.json",
                    help="results file (a .md is written beside it)")
    args = ap.parse_args()

    import torch

    from dashclip.data.catalog import Catalog
    from dashclip.training.data import CatalogPairs
    from dashclip.models.feature_cache import build_or_open
    from dashclip.training.pretrain import (ImageSource, PretrainConfig, build_model, freeze, pretrain)

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = os.getloadavg()
    catalog = Catalog.open(args.catalog)
    labels_col = args.label if args.label in catalog.products.columns else "category"
    labels = catalog.products[labels_col].astype(str).to_numpy()
    cfg = PretrainConfig(config=args.config, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                         heldout_frac=args.heldout_frac, freeze_image=True, seed=args.seed,
                         cache_dir=args.cache_dir, ckpt_every=100, resume=args.resume,
                         amp=None if args.amp == "none" else args.amp)
    cache_root = Path(args.cache_dir) if args.cache_dir else None

    with LoadSampler() as load:
        # 1. The image-feature cache (its build is the one-time cost of the frozen-image mode).
        before_model = build_model(cfg)
        freeze(before_model.image_tower)
        pairs = CatalogPairs.from_catalog(catalog, cfg.heldout_frac, cfg.seed)
        from dashclip.settings import image_cache_dir
        t0 = time.time()
        cache = build_or_open(before_model, pairs.image_paths, cache_root or image_cache_dir(), amp=cfg.amp)
        cache_wall = time.time() - t0
        pairs = pairs.without_images(~cache.valid)
        images = ImageSource(before_model, pairs, cache)
        test_rows = pairs.products_with_image(heldout=True)
        train_all = pairs.products_with_image(heldout=False)
        rng = np.random.default_rng(args.seed)
        n_probe = args.probe_train_products
        train_rows = (np.sort(rng.choice(train_all, n_probe, replace=False)) if 0 < n_probe < len(train_all)
                      else np.sort(train_all))
        print(f"products {len(pairs.heldout)}, held out {len(test_rows)}, train pairs {len(pairs.train_pairs())}; "
              f"cache {cache.meta['n_valid']} images, built in {cache.meta['build_seconds']}s", flush=True)

        # 2. Before Stage 1.
        print("before Stage 1:", flush=True)
        before = measure(before_model, pairs, images, train_rows, test_rows, labels, labels_col, 256)
        print(json.dumps(before["retrieval"]), flush=True)
        del before_model, images

        # 3. Stage 1.
        t0 = time.time()
        if args.trained_run:
            trained, tr = finished_run(Path(args.trained_run), cfg)
        else:
            result = pretrain(catalog, args.out, cfg)
            trained, tr = result.model, result.train
        train_wall = time.time() - t0

        # 4. After Stage 1.
        print("after Stage 1:", flush=True)
        after = measure(trained, pairs, ImageSource(trained, pairs, cache), train_rows, test_rows,
                        labels, labels_col, 256)
        print(json.dumps(after["retrieval"]), flush=True)

    b10, a10 = before["retrieval"]["t2i_r@10"], after["retrieval"]["t2i_r@10"]
    fused, best_single = after["probe_accuracy"]["fused"], max(after["probe_accuracy"]["image"],
                                                                after["probe_accuracy"]["text"])
    report = {
        "benchmark": "stage1_pretrain",
        "started_utc": started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform()},
        "load_average": {"at_start": [round(x, 2) for x in load_start], "during_1min": load.summary(),
                         "at_end": [round(x, 2) for x in os.getloadavg()]},
        "catalog": {"path": str(args.catalog), "products": int(len(pairs.heldout)),
                    "heldout_products_evaluated": int(len(test_rows)),
                    "probe_train_products": int(len(train_rows)), "probe_label": labels_col,
                    "train_pairs": int(len(pairs.train_pairs())), "skipped": pairs.skipped},
        "config": {k: v for k, v in vars(args).items()},
        "image_cache": {"images": int(len(cache)), "failed": int(cache.meta.get("n_failed", 0)),
                        "build_seconds": cache.meta.get("build_seconds"),
                        "images_per_second": round(len(cache) / cache.meta["build_seconds"], 1)
                        if cache.meta.get("build_seconds") else None,
                        "reused_existing_cache": cache_wall < 0.5 * (cache.meta.get("build_seconds") or 0),
                        "patch_shape": list(cache.patches.shape[1:])},
        "stage1": {"steps": tr.step, "epochs_completed": tr.epoch, "pairs_trained": tr.examples,
                   "train_seconds": round(tr.seconds, 1), "pretrain_call_seconds": round(train_wall, 1),
                   "pairs_per_second": round(tr.examples / tr.seconds, 2) if tr.seconds else None,
                   "epoch_evals": tr.evals, "last_train_metrics": tr.last,
                   "trained_run": getattr(tr, "run_dir", None), "run_settings": getattr(tr, "run_settings", None)},
        "before": before, "after": after,
        "targets": {
            "t2i_r@10_lift": {"before": b10, "after": a10, "lift": (a10 / b10) if b10 else None,
                              "target": ">= 3x", "met": bool(b10 and a10 / b10 >= 3) or (b10 == 0 and a10 > 0)},
            "fused_probe_vs_best_single": {"fused": fused, "best_single": best_single,
                                           "target": "fused >= max(image, text)", "met": fused >= best_single},
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    from dashclip.io import write_json, write_text
    write_json(args.results, report)
    write_text(args.results.with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    b, a, s, c, t = r["before"], r["after"], r["stage1"], r["image_cache"], r["targets"]
    lines = [
        "# Stage 1 pretrain benchmark (fashion catalog)", "",
        f"Run {r['started_utc']} -> {r['finished_utc']} on {r['machine']['nproc']} x {r['machine']['cpu']} "
        f"(torch threads {r['machine']['torch_threads']}). Load average (1 min) during the run: "
        f"mean {r['load_average']['during_1min']['mean']}, max {r['load_average']['during_1min']['max']} "
        "(the machine is shared with other engineers' work).", "",
        f"Model config `{r['config'].get('config', 'default')}`. "
        f"Catalog: {r['catalog']['products']} products; {r['catalog']['heldout_products_evaluated']} held out "
        f"(by id, {r['config']['heldout_frac']:.0%}); {r['catalog']['train_pairs']} training pairs. "
        f"Image tower frozen and cached at {r['config']['image_size']} px; text tower, fusion and "
        f"projections trained for {s['steps']} steps of batch {r['config']['batch_size']} "
        f"({s['pairs_trained'] / max(r['catalog']['train_pairs'], 1):.2f} epochs). The aisle probe "
        f"(`{r['catalog']['probe_label']}`; logistic regression, C=10) and the 10-NN classifier fit on "
        f"{r['catalog']['probe_train_products']} training products' embeddings.", "",
        "| | before Stage 1 | after Stage 1 |", "|---|---|---|",
    ]
    for k in ("t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10"):
        lines.append(f"| held-out {k} | {b['retrieval'][k]:.4f} | {a['retrieval'][k]:.4f} |")
    for k in ("fused", "image", "text"):
        lines.append(f"| aisle probe accuracy, {k} embedding | {b['probe_accuracy'][k]:.4f} | "
                     f"{a['probe_accuracy'][k]:.4f} |")
    for k in ("fused", "image", "text"):
        if k in a.get("knn_accuracy", {}):
            lines.append(f"| aisle 10-NN accuracy, {k} embedding | {b['knn_accuracy'][k]:.4f} | "
                         f"{a['knn_accuracy'][k]:.4f} |")
    lift = t["t2i_r@10_lift"]
    fz = t["fused_probe_vs_best_single"]
    lines += [
        "", "## Cost", "",
        f"- Image-feature cache: {c['images']} images in {c['build_seconds']} s ({c['images_per_second']} img/s), "
        f"{c['failed']} failed to load; patch features {c['patch_shape']} per image (float16)."
        + (" (This run reused an existing cache; the build time is from when it was built.)"
           if c["reused_existing_cache"] else ""),
        f"- Stage 1 training: {s['pairs_trained']} pairs in {s['train_seconds']} s = "
        f"**{s['pairs_per_second']} pairs/s** (including the per-epoch held-out evaluation)."
        + (f" Measured on the finished run `{s['trained_run']}` (settings {s['run_settings']}): speed is the "
           "mean of its logged pairs_per_s." if s.get("trained_run") else ""),
        "", "## Targets", "",
        f"- Held-out text->image R@10 lift >= 3x: before {lift['before']:.4f}, after {lift['after']:.4f}, "
        f"lift {lift['lift']:.1f}x -> **{'met' if lift['met'] else 'MISSED'}**." if lift["lift"] is not None else
        f"- Held-out text->image R@10: before {lift['before']}, after {lift['after']}.",
        f"- Fused aisle accuracy >= best of image-only/text-only: fused {fz['fused']:.4f}, best single "
        f"{fz['best_single']:.4f} -> **{'met' if fz['met'] else 'MISSED'}**.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
