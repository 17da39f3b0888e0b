"""Probe (issue 20): would training the image tower's last block for photo queries beat a head on frozen features?

    python benchmarks/photo_tower_probe.py --model runs/ph/stage1/model --embeddings runs/ph/emb \
        --catalog runs/ph/catalog [--train-photos 8000] [--epochs 12] [--arms frozen 1e-4 3e-4]

The photo head (`dashclip align-photos`) reads the frozen tower's pooled features: fashion P@10 of the same
articleType stays near 0.84 whatever the head (photo_search_expansion.md), short of issue 20's 0.85. This
measures the next lever before anyone builds it: a photo-side copy of EfficientNet-Lite's last MBConv block
and head conv, trained with the head, against the head alone, on the same photos and the same loop.

- Photos: --train-photos of the training products (Stage 1's split: seed 0, 10% held out), and the
  validation and test photos of photo_search.py's fashion part (held-out products, 1,000 each).
- The last block's inputs (192 x 7 x 7 at 224 px) are computed once and kept in --work; only the last
  block, the head conv and the photo head run per step. BatchNorm keeps its ImageNet statistics.
- Loss as `training.photo_align`: contrastive (learnable temperature) + 10 x (1 - cos) to the photo's
  product embedding; AdamW, cosine schedule, head lr 1e-3, the tower's lr per arm ("frozen": none).
- After every epoch: P@10 of the articleType on the validation and test photos against all products.

A probe with fewer photos than the served head (39,660), so compare its arms with each other, not with the
served figure. Writes benchmarks/results/photo_tower_probe.json and .md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np

import _machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)
from photo_search import precision_at_10, query_photo_rows

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGE_SIZE = 224


def photo_rows(ids, train_photos: int):
    """(train, validation, test) product rows: test and validation as photo_search.py's fashion part."""
    from dashclip.training.data import heldout_mask

    test, val = query_photo_rows(ids, 1000)
    pool = np.flatnonzero(~heldout_mask(ids["id"].tolist(), 0.1, 0) & ids["has_image"].to_numpy())
    train = np.random.default_rng(2).choice(pool, train_photos or len(pool), replace=False)
    return train, val, test


def block_inputs(model, catalog, images: list[str], work: Path) -> tuple[np.ndarray, dict]:
    """The last MBConv block's input (the tower's trunk) for each image, float16, through the feature cache's
    resumable "trunk" part kept in `work`; and when and in how many seconds that cache was built."""
    from dashclip.models.feature_cache import build_or_open

    cache = build_or_open(model, [catalog.image_path(p) for p in images], work, image_size=IMAGE_SIZE, part="trunk")
    if not cache.valid.all():
        raise SystemExit(f"{int((~cache.valid).sum())} photos unreadable: {cache.meta['first_errors'][:3]}")
    return np.array(cache.arrays["trunk"]), {k: cache.meta[k] for k in ("build_seconds", "built_at")}


def run_arm(model, hidden, X, rows, products, article, tower_lr, epochs, batch_size) -> dict:
    import torch
    from torch import nn

    from dashclip.training.photo_align import PhotoAlignConfig, photo_loss

    cfg = PhotoAlignConfig()      # align-photos' defaults: head lr, temperature, cosine term, weight decay
    torch.manual_seed(0)
    train, val, test = rows
    # the photo side as align-photos makes it: a head, and a copy of the tower's last stage (`TowerTop`)
    model.add_photo_encoder(hidden, IMAGE_SIZE, tower_top=True)
    model.photo_tower.requires_grad_(tower_lr > 0)

    def top(x):
        return model.embed_photo_features(x.float())
    scale = nn.Parameter(torch.tensor(float(np.log(1 / cfg.temperature))))
    groups = [{"params": list(model.photo_proj.parameters()) + [scale], "lr": cfg.lr}]
    if tower_lr > 0:
        groups.append({"params": list(model.photo_tower.parameters()), "lr": tower_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    X = torch.from_numpy(X)
    n, steps, step, t = len(train), epochs * -(-len(train) // batch_size), 0, time.time()
    evals = []
    for epoch in range(epochs):
        for m in model.photo_encoder_modules():
            m.train()
        for sel in torch.randperm(n).split(batch_size):
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
            ids = torch.from_numpy(train[sel.numpy()])
            loss, _ = photo_loss(top(X[sel]), products[ids], ids, scale, cfg.regression_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        for m in model.photo_encoder_modules():
            m.eval()
        with torch.inference_mode():
            q = torch.cat([top(X[n + i:n + i + 512]) for i in range(0, len(val) + len(test), 512)]).numpy()
        vec = products.numpy()
        evals.append({"epoch": epoch + 1, "seconds": round(time.time() - t, 1), "loss": round(loss.item(), 4),
                      "val": precision_at_10(q[:len(val)], val, vec, article),
                      "test": precision_at_10(q[len(val):], test, vec, article)})
        print(json.dumps({"tower_lr": tower_lr, **evals[-1]}), flush=True)
    return {"tower_lr": tower_lr, "final": evals[-1], "best_val_epoch": max(evals, key=lambda e: e["val"]),
            "epochs": evals}


def markdown(r: dict) -> str:
    lines = ["# Photo head: a trained last tower block against frozen features (issue 20 probe)", "",
             f"{r['date']}, commit {r['commit']}, {r['machine']}, load at start {r['load_at_start']}.", "",
             f"{r['train_photos']} training photos, {r['epochs']} epochs, batch {r['batch_size']}; P@10 of the "
             f"same articleType on 1,000 validation / 1,000 test photos (photo_search.py's), against all "
             f"{r['n_products']} products. Block inputs: "
             f"{r['block_inputs_built']['build_seconds']} s (the trunk cache in --work, built "
             f"{r['block_inputs_built']['built_at']}).", "",
             "| tower | val P@10 | test P@10 | best val (epoch) | train s |", "|---|---:|---:|---:|---:|"]
    for a in r["arms"]:
        name = "frozen (the served kind of head)" if a["tower_lr"] == 0 else f"last block + head conv, lr {a['tower_lr']:g}"
        b = a["best_val_epoch"]
        lines.append(f"| {name} | {a['final']['val']:.4f} | {a['final']['test']:.4f} | {b['val']:.4f} ({b['epoch']}) "
                     f"| {a['final']['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the Stage 1 model whose embeddings the index holds")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--catalog", required=True)
    p.add_argument("--train-photos", type=int, default=8000, help="photos of training products (0: all, 39,660 "
                   "on the fashion catalog; about 21 min of block inputs on 2 cores)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=None, help="the photo head's MLP width (default: align-photos')")
    p.add_argument("--arms", nargs="+", default=["frozen", "1e-4", "3e-4"], help="the tower's lr per arm")
    p.add_argument("--work", default="runs/photo_tower_probe", help="where the block inputs are kept")
    p.add_argument("--results", default="photo_tower_probe")
    args = p.parse_args()
    import pandas as pd
    import torch

    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.training.align import load_product_vectors
    from dashclip.training.photo_align import PhotoAlignConfig

    torch.set_num_threads(os.cpu_count() or 1)
    result = {"script": "benchmarks/photo_tower_probe.py", "commit": _machine.commit(),
              "machine": _machine.cpu_model() + f", {os.cpu_count()} cores",
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_at_start": round(os.getloadavg()[0], 2), "args": vars(args)}
    model = dashclip.load(args.model).eval()
    product_ids, vectors = load_product_vectors(model, args.embeddings)
    ids = pd.read_parquet(Path(args.embeddings) / "ids.parquet")
    if list(ids["id"]) != list(product_ids):
        raise SystemExit(f"{args.embeddings}: ids.parquet and the vectors disagree")
    products = pd.read_parquet(Path(args.catalog) / "catalog.parquet").set_index("id").loc[ids["id"]]
    article = products["category"].astype(str).to_numpy()
    rows = photo_rows(ids, args.train_photos)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    X, built = block_inputs(model, Catalog.open(args.catalog), products["image"].iloc[np.concatenate(rows)].tolist(),
                            work)
    result.update(train_photos=len(rows[0]), epochs=args.epochs, batch_size=args.batch_size,
                  n_products=len(ids), block_inputs_built=built)
    tensor = torch.from_numpy(np.array(vectors, np.float32))
    hidden = args.hidden or PhotoAlignConfig().hidden
    result["arms"] = [run_arm(model, hidden, X, rows, tensor, article, 0.0 if a == "frozen" else float(a),
                              args.epochs, args.batch_size) for a in args.arms]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.results}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
