"""Benchmark: search by photo (issue 20) on this machine, every figure as measured.

    python benchmarks/photo_search.py [--work runs/exp] [--grocery-epochs 3] \
        [--fashion-model DIR --fashion-embeddings DIR --fashion-catalog DIR] \
        [--latency-model DIR --latency-index DIR]

1. Grocery (../shared/data/grocery-store-dataset): the 81-product catalog (iconic image + description); each
   in-store photo of the test split is a query; top-1 / top-5 of the right product (fine) and of its coarse
   class, against three product embeddings: fused (the indexed product embedding), text-only and iconic
   image-only (`evaluation.evaluators.GroceryEvaluator`). Zero-shot (the default model before Stage 1) and
   after Stage 1 on the catalog with its train-split photos, with the image -> product term
   (`PretrainConfig.image_product_weight`), frozen image tower (`evaluation.grocery.pretrain_on_split`).
   A finished run in --work is reused (its pretrain_config.json must hold the same image_product_weight).
2. Fashion: each held-out product's photo (Stage 1 split, seed 0, 10%; a sample of --fashion-queries) is a
   query against every other product: Precision@10 of its articleType, for the photo's image embedding
   against the fused, image and text product embeddings (which embedding should answer a photo), and for
   "more like this" (its own fused embedding). Photo + "in <colour>": the share of the top 10 in that colour,
   for the text weights of `serving.search` (IMAGE_TEXT_WEIGHT is the one served), mixed as served
   (`ranking.mix_photo_and_words`: each side in units of its spread over the same product sample). The photo's embedding is
   the embeddings dir's image.npy row (what `encode_image` gives the same photo).
3. Latency, one process, one run: p50 of `Searcher.search` (text) and `Searcher.search_image` (the photo's
   file bytes: decode + image tower + index search) over the same index.

Writes benchmarks/results/photo_search.json and .md (--results NAME: NAME.json and .md), stamped with the
date, commit and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import _machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COLOURS = ["Black", "White", "Blue", "Red", "Green", "Pink", "Brown", "Grey", "Navy Blue", "Yellow", "Purple"]


def grocery(args) -> dict:
    import torch

    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.evaluation.evaluators import GroceryEvaluator
    from dashclip.evaluation.grocery import pretrain_on_split
    from dashclip.io import read_json
    from dashclip.models.factory import create_model

    catalog_dir = Path(args.work) / "../catalogs/grocery"
    if not (catalog_dir / "manifest.json").exists():
        from dashclip.data.importer import import_catalog
        from dashclip.data.presets import get_preset
        raise SystemExit(f"import the grocery catalog first: dashclip catalog import grocery-store-dataset "
                         f"--out {catalog_dir}")
    catalog = Catalog.open(catalog_dir)
    evaluate = GroceryEvaluator(catalog, split="test", feature_cache_dir=str(Path(args.work) / "../cache/grocery-eval"),
                                photo_image_weights=args.photo_image_weights, photo_expansions=args.photo_expansions)
    out = {"catalog": str(catalog_dir), "n_products": len(catalog)}
    t = time.time()
    out["zero_shot"] = evaluate(create_model("default"))
    out["zero_shot"]["seconds"] = round(time.time() - t, 1)
    run = Path(args.work) / f"grocery-ip{args.image_product_weight:g}"
    if run.exists():
        done = read_json(run / "pretrain_config.json")
        if done.get("image_product_weight") != args.image_product_weight:
            raise SystemExit(f"{run}: a run with image_product_weight {done.get('image_product_weight')}")
    t = time.time()
    model_dir = pretrain_on_split(catalog, run, epochs=args.grocery_epochs, image_product_weight=args.image_product_weight,
                                  cache_dir=str(Path(args.work) / "../cache/grocery-train"), progress=False)
    cfg = read_json(run / "pretrain_config.json")
    out["stage1"] = {**evaluate(dashclip.load(model_dir)), "run": str(run), "epochs": cfg["epochs"],
                     "batch_size": cfg["batch_size"], "image_product_weight": cfg["image_product_weight"],
                     "train_pairs": cfg["split"]["train_pairs"], "image_size": cfg.get("image_size"),
                     "seconds_incl_reused_training": round(time.time() - t, 1)}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if m.get("kind") == "train"]
    if train_rows:
        out["stage1"]["steps"] = train_rows[-1].get("step")
    if args.photo_epochs:
        out["photo_head"] = grocery_photo_head(args, catalog, model_dir, run, evaluate)
    return out


def grocery_photo_head(args, catalog, model_dir, run, evaluate) -> dict:
    """Photo alignment on the Stage 1 model: the photo head trained on the train-split photos against the
    catalog's product embeddings, no product held out (the val and test photos are the unseen ones; the
    val photos are evaluated after every epoch), then the test photos as above."""
    import dashclip
    from dashclip.evaluation.evaluators import GroceryEvaluator
    from dashclip.models.embeddings import embed_catalog
    from dashclip.training.photo_align import PhotoAlignConfig, align_photos

    emb = run / "embeddings"
    if not (emb / "meta.json").exists():
        embed_catalog(dashclip.load(model_dir), catalog, emb, progress=False)
    weight, tower_lr = args.photo_regression_weight, args.photo_tower_lr
    cfg = PhotoAlignConfig(epochs=args.photo_epochs, heldout_frac=0.0, regression_weight=weight, tower_lr=tower_lr)
    # the run's name says how it was trained (runs of the first recipe, batch 512 and no tower top, keep theirs)
    photo_run = run / (f"photo-{args.photo_epochs}ep" + (f"-rw{weight:g}" if weight else "")
                       + (f"-tl{tower_lr:g}" if tower_lr else "") + (f"-b{cfg.batch_size}" if cfg.batch_size != 512 else ""))
    t = time.time()
    if (photo_run / "photo_align.json").exists():
        summary = json.loads((photo_run / "photo_align.json").read_text())
    else:
        summary = align_photos(model_dir, catalog, emb, photo_run, cfg, cfg.loop(progress=False),
                               cache_dir=Path(args.work) / "../cache/grocery-train")
    model = dashclip.load(photo_run / "model")
    val = GroceryEvaluator(catalog, split="val", feature_cache_dir=str(Path(args.work) / "../cache/grocery-eval"),
                           photo_image_weights=args.photo_image_weights, photo_expansions=args.photo_expansions)
    return {**evaluate(model), "val": val(model), "run": str(photo_run), "epochs": cfg.epochs,
            "regression_weight": cfg.regression_weight, "tower_lr": cfg.tower_lr,
            "train_photos": summary["train_photos"], "steps": summary["steps"], "train_seconds": summary["seconds"],
            "evals": summary["evals"], "seconds_incl_reused_training": round(time.time() - t, 1)}


def precision_at_10(queries: np.ndarray, q_rows: np.ndarray, targets: np.ndarray, labels: np.ndarray,
                    want: np.ndarray | None = None) -> float:
    sims = queries @ targets.T
    sims[np.arange(len(q_rows)), q_rows] = -np.inf           # the product itself is no answer
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    want = labels[q_rows] if want is None else want
    return float((labels[top] == want[:, None]).mean())


def query_photo_rows(ids, n: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """(test, validation) rows of the fashion photo queries: up to n photos each of the products Stage 1
    holds out (seed 0, 10%), disjoint; the validation photos are those a head and the expansion are chosen
    on. `rng` (default: seeded 0) draws the test photos."""
    from dashclip.training.data import heldout_mask

    held = np.flatnonzero(heldout_mask(ids["id"].tolist(), 0.1, 0) & ids["has_image"].to_numpy())
    rng = np.random.default_rng(0) if rng is None else rng
    test = rng.choice(held, min(n, len(held)), replace=False)
    val = np.random.default_rng(1).choice(np.setdiff1d(held, test), min(n, len(held) - len(test)), replace=False)
    return test, val


def fashion(args) -> dict:
    import pandas as pd

    import dashclip
    from dashclip.models.model import to_numpy
    from dashclip.index.catalog_index import PHOTO_IMAGE_WEIGHT
    from dashclip.ranking import PHOTO_EXPANSION, photo_vectors
    from dashclip.serving.search import IMAGE_TEXT_WEIGHT

    emb = Path(args.fashion_embeddings)
    if emb.suffix == ".npz":      # a subset made by fashion_stage1: its rows are the catalog's first n
        data = np.load(emb)
        vec = {k: data[k] for k in ("fused", "image", "text")}
        ids = pd.read_parquet(Path(args.fashion_embeddings_ids) / "ids.parquet").iloc[:len(vec["fused"])]
    else:
        ids = pd.read_parquet(emb / "ids.parquet")
        vec = {k: np.load(emb / f"{k}.npy", mmap_mode="r")[:args.fashion_subset or None] for k in ("fused", "image", "text")}
        ids = ids.iloc[:len(vec["fused"])]
    products = pd.read_parquet(Path(args.fashion_catalog) / "catalog.parquet").set_index("id").loc[ids["id"]]
    article = products["category"].astype(str).to_numpy()
    colour = products["baseColour"].astype(str).to_numpy()
    rng = np.random.default_rng(0)     # draws the test photos, then the colours asked
    rows, val = query_photo_rows(ids, args.fashion_queries, rng)
    out = {"embeddings": str(emb), "model": args.fashion_model, "n_products": len(ids), "n_queries": len(rows),
           "served_photo_image_weight": PHOTO_IMAGE_WEIGHT, "p10_articletype": {}}
    for name, q, t in [("photo -> fused (product embedding, served)", "image", "fused"),
                       ("photo -> image (image to image)", "image", "image"),
                       ("photo -> text", "image", "text"),
                       ("more like this: fused -> fused", "fused", "fused")]:
        out["p10_articletype"][name] = precision_at_10(vec[q][rows], rows, vec[t], article)
    for w in args.photo_image_weights:   # the photo index's vectors (ranking.photo_vectors)
        mixed = photo_vectors(vec["fused"], vec["image"], w)
        out["p10_articletype"][f"photo -> fused+image {w:g}"] = precision_at_10(vec["image"][rows], rows, mixed, article)
    # photo + "in <colour>": products whose colour is one of COLOURS, asked for another of them
    model = dashclip.load(args.fashion_model)
    cand = rows[np.isin(colour[rows], COLOURS)]
    asked = np.array([rng.choice([c for c in COLOURS if c != colour[r]]) for r in cand])
    words = {c: to_numpy(model.encode_query([f"in {c.lower()}"]))[0] for c in COLOURS}
    text = np.stack([words[c] for c in asked])
    out["colour"] = colour_shares(vec["image"], cand, text, vec, colour, asked, article, args.text_weights)
    served = photo_vectors(vec["fused"], vec["image"], PHOTO_IMAGE_WEIGHT)
    out["expansion"] = {"photo -> fused+image (photo index)": expansion_sweep(vec["image"], served, val, rows,
                                                                                article, args.photo_expansions),
                        "n_validation": int(len(val)), "served_m": PHOTO_EXPANSION,
                        "colour_m": args.colour_expansion}
    out["colour_expanded"] = colour_shares(vec["image"], cand, text, vec, colour, asked, article,
                                           [IMAGE_TEXT_WEIGHT], expansion=args.colour_expansion)
    if args.fashion_photo_model:     # photo heads of photo alignment (`dashclip align-photos`)
        # the head with the best P@10 on the validation photos is the one reported in full (its photo size
        # and training are what is being chosen), every head's test row too
        heads, photos = [], {}
        for path in args.fashion_photo_model:
            photo, size = photo_head_vectors(path, args.fashion_catalog, ids, np.concatenate([rows, val]), len(ids),
                                             model.model_id)
            photos[path] = photo
            served_mix = colour_shares(photo, cand, text, vec, colour, asked, article, [IMAGE_TEXT_WEIGHT])
            heads.append({"model": path, "photo_size": size, **head_run(path),
                          "validation_p10": precision_at_10(photo[val], val, vec["fused"], article),
                          "test_p10": precision_at_10(photo[rows], rows, vec["fused"], article),
                          "colour_served": served_mix["by_weight"][f"{IMAGE_TEXT_WEIGHT:g}"]})
        best = max(heads, key=lambda h: h["validation_p10"])
        out["photo_heads"] = {"n_validation": int(len(val)), "heads": heads, "chosen": best["model"]}
        out["photo_model"], out["photo_head_size"] = best["model"], best["photo_size"]
        out["photo_align"] = {k: best[k] for k in ("train_photos", "steps", "epochs", "seconds", "start", "last",
                                                    "regression_weight", "tower_lr", "batch_size")
                              if k in best}
        photo = photos[best["model"]]
        head = out["p10_articletype_photo_head"] = {
            "photo head -> fused (product embedding)": precision_at_10(photo[rows], rows, vec["fused"], article),
            "photo head -> image": precision_at_10(photo[rows], rows, vec["image"], article)}
        for w in args.photo_image_weights:
            mixed = photo_vectors(vec["fused"], vec["image"], w)
            head[f"photo head -> fused+image {w:g}"] = precision_at_10(photo[rows], rows, mixed, article)
        out["colour_photo_head"] = colour_shares(photo, cand, text, vec, colour, asked, article, args.text_weights)
        out["expansion"]["photo head -> fused"] = expansion_sweep(photo, vec["fused"], val, rows, article,
                                                                  args.photo_expansions)
        out["colour_photo_head_expanded"] = colour_shares(photo, cand, text, vec, colour, asked, article,
                                                          [IMAGE_TEXT_WEIGHT], expansion=args.colour_expansion)
    return out


def expansion_sweep(photos, targets, val, rows, article, ms) -> dict:
    """P@10 same articleType on the validation and test photos, each photo's vector expanded with its first m
    hits among `targets` (`ranking.expand_exactly`, as the served two searches; m 0: not expanded). A
    photo's own product is used neither as a hit nor for the expansion: a shopper's photo has none."""
    from dashclip.ranking import expand_exactly

    return {str(m): {part: precision_at_10(expand_exactly(photos[r], targets, m, exclude=r), r, targets, article)
                     for part, r in (("validation", val), ("test", rows))}
            for m in sorted({0, *ms})}


def head_run(model_dir) -> dict:
    """How a photo head was trained, from its run record (`photo_align.json` beside the model), if any."""
    run = Path(model_dir).parent / "photo_align.json"
    if not run.is_file():
        return {}
    done = json.loads(run.read_text())
    return {**{k: done.get(k) for k in ("train_photos", "steps", "epochs", "seconds", "start")},
            # heads trained before the cosine term (or the tower top) existed were contrastive only (head only)
            "regression_weight": done.get("config", {}).get("regression_weight", 0.0),
            "tower_lr": done.get("config", {}).get("tower_lr", 0.0),
            "batch_size": done.get("loop", {}).get("batch_size"),
            "last": done["evals"][-1] if done.get("evals") else {}}


def colour_shares(photos, cand, text, vec, colour, asked, article, weights, expansion: int = 0) -> dict:
    """Photo + "in <colour>" against the product embeddings, for each text weight, mixed as served, then
    expanded with the first `expansion` hits (0: not), the photo's own product left out."""
    from dashclip.serving.search import IMAGE_TEXT_WEIGHT

    from dashclip.ranking import expand_exactly, mix_photo_and_words, spread_sample_rows

    out = {"n_queries": int(len(cand)), "served_weight": IMAGE_TEXT_WEIGHT, "by_weight": {}}
    sample = vec["fused"][spread_sample_rows(len(vec["fused"]))]     # as Searcher.spread_products
    for w in weights:
        q = expand_exactly(mix_photo_and_words(photos[cand], text, sample, w), vec["fused"], expansion, exclude=cand)
        out["by_weight"][f"{w:g}"] = {
            "colour_share_top10": precision_at_10(q, cand, vec["fused"], colour, asked),
            "p10_articletype": precision_at_10(q, cand, vec["fused"], article)}
    return out


def photo_head_vectors(model_dir, catalog_dir, ids, rows, n, model_id) -> tuple[np.ndarray, int]:
    """([n, D] with the photo head's embedding of each query photo at its row (as served: the photo file
    decoded, preprocessed and encoded by `encode_photo`), other rows zeros; the side photos are read at)."""
    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.data.images import load_image
    from dashclip.models.model import to_numpy

    model = dashclip.load(model_dir)
    if model.model_id != model_id:
        raise SystemExit(f"{model_dir}: model {model.model_id}, not the embeddings' {model_id}")
    catalog = Catalog.open(catalog_dir)
    images = catalog.products.set_index("id").loc[ids["id"].iloc[rows], "image"].tolist()
    out = np.zeros((n, model.embed_dim), np.float32)
    for i in range(0, len(rows), 64):
        batch = [load_image(catalog.image_path(p)) for p in images[i:i + 64]]
        out[rows[i:i + 64]] = to_numpy(model.encode_photo(batch))
    return out, model.photo_size


def fashion_stage1(args) -> dict:
    """Stage 1 on the fashion catalog as the reference run (--fashion-model's pretrain_config.json: same steps,
    batch, image size, seed, cached image tower) plus the image -> product term; then the fashion measures on
    its embeddings, and NDCG@10 of text -> product (the Stage 1 text tower as query encoder, the 40 held-out
    dev queries, ranking all products) for both runs: the term must not lower it."""
    import dataclasses

    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.evaluation.baselines import EmbeddingScorer, model_query_encoder, rank
    from dashclip.evaluation.metrics import evaluate_rankings
    from dashclip.evaluation.qrels import fashion_qrels, load_queries
    from dashclip.io import read_json
    from dashclip.models.embeddings import embed_catalog, load_embeddings
    from dashclip.training.pretrain import PretrainConfig, pretrain

    reference = read_json(Path(args.fashion_model).parent / "pretrain_config.json")
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    keep = {k: v for k, v in reference.items() if k in fields and k not in ("cache_dir", "resume", "progress",
                                                                              "ckpt_every")}
    cfg = PretrainConfig(**{**keep, "image_product_weight": args.image_product_weight, "progress": False,
                            "cache_dir": args.fashion_cache, "ckpt_every": 0})
    run = Path(args.work) / f"fashion-ip{args.image_product_weight:g}"
    catalog = Catalog.open(args.fashion_catalog)
    t = time.time()
    if not (run / "model" / "config.json").exists():
        pretrain(catalog, run, cfg)
    train_seconds = round(time.time() - t, 1)
    model = dashclip.load(run / "model")
    n = args.fashion_subset or len(catalog)
    subset = run / f"first-{n}.npz"     # the first n products' embeddings (all of them: n = the catalog)
    if not subset.exists():
        from dashclip.models.embeddings import CachedImageFeatures, embed_batches

        model.eval()
        parts = {k: np.zeros((n, model.embed_dim), np.float32) for k in ("fused", "image", "text")}
        cached = CachedImageFeatures.find(model, catalog, args.fashion_cache)
        for batch, vecs, _ in embed_batches(model, catalog, catalog.product_texts(), np.arange(n), cached=cached):
            for k in parts:
                parts[k][batch] = vecs[k]
        np.savez(subset, **parts)
    new_vectors = np.load(subset)
    out = {"run": str(run), "steps": cfg.max_steps, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
           "image_product_weight": cfg.image_product_weight, "train_seconds_if_trained_now": train_seconds}
    queries = load_queries(Path(os.environ.get("DASHCLIP_DATA", HERE.parent.parent / "shared/data"))
                           / "fashion-queries/dev_queries.jsonl", heldout_only=True)
    qrels = fashion_qrels(queries, catalog)
    ndcg = {}
    products = set(catalog.products["id"].iloc[:n].tolist())
    qrels = {q: {p: g for p, g in labels.items() if p in products} for q, labels in qrels.items()}
    queries = [q for q in queries if qrels.get(q["qid"])]      # queries with a relevant product among the n
    for name, model_dir, emb_dir in (("reference (no image -> product term)", args.fashion_model, None),
                                     ("with the image -> product term", run / "model", subset)):
        emb = load_embeddings(args.fashion_embeddings)
        fused = np.asarray(emb.vectors["fused"][:n]) if emb_dir is None else new_vectors["fused"]
        scorer = EmbeddingScorer(name, model_query_encoder(dashclip.load(model_dir)), fused, emb.ids[:n])
        ranked = rank(scorer, [q["query"] for q in queries], k=100)
        ndcg[name] = evaluate_rankings({q["qid"]: r for q, r in zip(queries, ranked)}, qrels)["overall"]["ndcg@10"]
    out["text_ndcg10_heldout"] = ndcg
    out["n_text_queries"] = len(queries)
    out["n_products_ranked"] = n
    out["reference_same_products"] = fashion(args)     # the reference run on the same n products
    measures = fashion(argparse.Namespace(**{**vars(args), "fashion_model": str(run / "model"),
                                             "fashion_embeddings": str(subset),
                                             "fashion_embeddings_ids": args.fashion_embeddings}))
    return {**out, **measures}


def latency(args) -> dict:
    import torch

    from dashclip.data.catalog import Catalog  # noqa: F401
    from dashclip.serving.search import Searcher

    searcher = Searcher.open(args.latency_model, args.latency_index)
    queries = [json.loads(line)["query"] for line in
               (Path(os.environ.get("DASHCLIP_DATA", HERE.parent.parent / "shared/data")) / "fashion-queries/dev_queries.jsonl")
               .read_text().splitlines()[:args.latency_n]]
    images = [p for p in searcher.catalog.products["image"].dropna().tolist()[:args.latency_n]]
    photos = [searcher.catalog.image_path(p).read_bytes() for p in images]
    def timed(fn, items):
        for x in items[:5]:
            fn(x)
        out = []
        for x in items:
            t = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t) * 1000)
        return out
    text_ms = timed(lambda q: searcher.search(q, k=24), queries)
    image_ms = timed(lambda b: searcher.search_image(b, k=24), photos)
    expanded = {}
    if args.colour_expansion:       # the cost of the optional photo query expansion (a second search)
        searcher.photo_expansion = args.colour_expansion
        expanded_ms = timed(lambda b: searcher.search_image(b, k=24), photos)
        searcher.photo_expansion = 0
        expanded = {"expansion_m": args.colour_expansion, "image_expanded_p50_ms": float(np.median(expanded_ms))}
    return {**expanded, "model": args.latency_model, "index": args.latency_index, "n_index": len(searcher.index),
            "n_text": len(text_ms), "n_image": len(image_ms), "torch_threads": torch.get_num_threads(),
            "text_p50_ms": float(np.median(text_ms)), "image_p50_ms": float(np.median(image_ms)),
            "ratio": float(np.median(image_ms) / np.median(text_ms)),
            "photo_size": "catalog photos (60x80 JPEG)", "photo_read_at": getattr(searcher.model, "photo_size", None)}


def shown(key: str, part: dict) -> str:
    """A row label: which ranking photos are served with (the photo index's mix since it exists; the
    fused product embedding in records made before it)."""
    served = part.get("served_photo_image_weight")
    if served is None:
        return key
    key = key.replace(" (product embedding, served)", " (product embedding)")
    return f"{key} (served)" if key == f"photo -> fused+image {served:g}" else key


def expansion_markdown(f: dict) -> list[str]:
    ex = f.get("expansion")
    if not ex:
        return []
    routes = {k: v for k, v in ex.items() if isinstance(v, dict)}
    ms = list(next(iter(routes.values())))
    lines = [f"Photo query expansion (`ranking.expand_query`: the query vector plus the vectors of its first m hits, "
             f"weighted by their scores, then the search; m 0: none; served m = {ex['served_m']}). P@10 same "
             f"articleType, validation ({ex['n_validation']} other held-out photos) / test ({f['n_queries']} "
             "photos); a photo's own product is neither a hit nor used:", "",
             "| route | " + " | ".join(f"m {m}" for m in ms) + " |", "|---|" + "---:|" * len(ms)]
    lines += [f"| {route} | " + " | ".join(f"{v[m]['validation']:.3f} / {v[m]['test']:.3f}" for m in ms) + " |"
              for route, v in routes.items()]
    lines += ["", f"Photo + \"in <colour>\" at the served text weight, expanded with m = {ex.get('colour_m')} after the "
              "words are mixed in (as `Searcher` does): asked colour in top 10 / P@10 same articleType (unexpanded: "
              "the tables above):", ""]
    for name, key in (("photo (no head)", "colour_expanded"), ("photo head", "colour_photo_head_expanded")):
        for w, m in (f.get(key) or {}).get("by_weight", {}).items():
            lines.append(f"- {name}, text weight {w}: {m['colour_share_top10']:.3f} / {m['p10_articletype']:.3f}")
    return lines + [""]


def markdown(r: dict) -> str:
    g, f, lat = r.get("grocery"), r.get("fashion"), r.get("latency")
    lines = [f"# Search by photo (`benchmarks/photo_search.py`)", "",
             f"{r['date']}, commit {r['commit']}, {r['machine']}, load average at start {r['load_at_start']}. "
             f"Every figure as measured.", ""]
    def stamp(part: dict) -> list[str]:
        m = part.get("measured")
        return [f"(Kept from an earlier run: {m['date']}, commit {m['commit']}, load average at start "
                f"{m['load_at_start']}.)", ""] if m else []

    if g:
        lines += ["## Grocery: in-store test photos -> the 81 products", "", *stamp(g),
                  f"{g['zero_shot']['n_photos']} test photos. Stage 1: {g['stage1'].get('steps')} steps, "
                  f"{g['stage1']['epochs']} epochs, batch {g['stage1']['batch_size']}, "
                  f"{g['stage1']['train_pairs']} train pairs (iconic + train-split photos), frozen image tower, "
                  f"image_product_weight {g['stage1']['image_product_weight']}.", "",
                  "| model | product embedding | fine top-1 | fine top-5 | coarse top-1 | coarse top-5 |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, key in (("zero-shot", "zero_shot"), ("after Stage 1", "stage1")):
            for kind in [k for k in g[key] if isinstance(g[key][k], dict) and "fine_top1" in g[key][k]]:
                m = g[key][kind]
                lines.append(f"| {name} | {kind} | {m['fine_top1']:.3f} | {m['fine_top5']:.3f} | "
                             f"{m['coarse_top1']:.3f} | {m['coarse_top5']:.3f} |")
        ph = g.get("photo_head")
        if ph:
            for kind in [k for k in ph if isinstance(ph[k], dict) and "fine_top1" in ph[k]]:
                m = ph[kind]
                lines.append(f"| after Stage 1 + photo head | {kind} | {m['fine_top1']:.3f} | {m['fine_top5']:.3f} | "
                             f"{m['coarse_top1']:.3f} | {m['coarse_top5']:.3f} |")
            lines += ["", f"Photo head: `dashclip align-photos` on the Stage 1 model, {ph['epochs']} epochs, "
                          f"regression weight {ph.get('regression_weight', 0.0):g}, "
                          f"tower top lr {ph.get('tower_lr', 0.0):g} (0: head only), "
                          f"{ph['train_photos']} train-split photos (iconic images included), {ph['steps']} steps, "
                          f"{ph['train_seconds']:.0f} s; no product held out. Validation photos "
                          f"({ph['val']['n_photos']}), fine top-1 / top-5: " + ", ".join(
                              f"{k} {ph['val'][k]['fine_top1']:.3f} / {ph['val'][k]['fine_top5']:.3f}"
                              for k in ph['val'] if isinstance(ph['val'][k], dict)) + "."]
        # as served: a model with a photo head searches the product embeddings; without one, the photo index
        served, how = ((ph["fused"], "the photo head against the product embeddings") if ph else
                       (g["stage1"].get("fused+image 0.5", g["stage1"]["fused"]), "the photo index (w 0.5)"))
        lines += ["", f"Targets (after Stage 1, as served: {how}): fine top-1 >= 0.65: **{served['fine_top1']:.3f}** "
                      f"({'met' if served['fine_top1'] >= 0.65 else 'missed'}); top-5 >= 0.92: "
                      f"**{served['fine_top5']:.3f}** ({'met' if served['fine_top5'] >= 0.92 else 'missed'}). "
                      "Stage 1 here is this script's default (3 epochs); photo_grocery_sweep.md chose Stage 1 "
                      "settings and the photo index's weight on the validation photos, without a photo head.", ""]
    if f:
        lines += ["## Fashion: held-out product photos -> the other products", "", *stamp(f),
                  f"{f['n_queries']} held-out photos of {f['n_products']} products; model {f['model']}.", "",
                  "| query -> product embedding | P@10 same articleType |", "|---|---:|"]
        lines += [f"| {shown(k, f)} | {v:.3f} |" for k, v in f["p10_articletype"].items()]
        lines += ["", f"Photo + \"in <colour>\" ({f['colour']['n_queries']} queries; served weight "
                      f"{f['colour']['served_weight']}):", "",
                  "| text weight | asked colour in top 10 | P@10 same articleType |", "|---:|---:|---:|"]
        lines += [f"| {w} | {m['colour_share_top10']:.3f} | {m['p10_articletype']:.3f} |"
                  for w, m in f["colour"]["by_weight"].items()]
        lines.append("")
        if f.get("p10_articletype_photo_head"):
            lines += [f"With the photo head of photo alignment ({f['photo_model']}, photos read at "
                      f"{f.get('photo_head_size', '?')} px; the same photos, decoded "
                      "and encoded as served; a model with a photo head serves the photo head -> product "
                      "embedding row, one without it the photo index row marked served above).", ""]
            if f.get("photo_heads"):
                ph = f["photo_heads"]
                lines += [f"Heads measured (photo head -> fused P@10 same articleType); the one reported below is "
                          f"the best on {ph['n_validation']} validation photos (other held-out products' photos):", "",
                          "| head | photos read at | epochs | regression weight | tower top lr | validation P@10 | "
                          "test P@10 | own product in top 10 (held-out photos) | photo + colour: colour in top 10 / P@10 |",
                          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
                lines += [f"| {h['model']}{' (chosen)' if h['model'] == ph['chosen'] else ''} | {h['photo_size']} px | "
                          f"{h.get('epochs', '?')} | {h.get('regression_weight', 0.0):g} | {h.get('tower_lr', 0.0):g} | "
                          f"{h['validation_p10']:.3f} | "
                          f"{h['test_p10']:.3f} | {h.get('last', {}).get('heldout_recall@10', float('nan')):.3f} | "
                          + (f"{h['colour_served']['colour_share_top10']:.3f} / {h['colour_served']['p10_articletype']:.3f} |"
                             if h.get("colour_served") else "|") for h in ph["heads"]]
                lines += ["", f"Photo + colour: the {f['colour']['n_queries']} photo + \"in <colour>\" queries at the "
                          f"served text weight {f['colour']['served_weight']}."]
                lines.append("")
            pa = f.get("photo_align")
            if pa:
                lines += [f"The head: {pa['epochs']} epochs, regression weight {pa.get('regression_weight', 0.0):g}, "
                          f"tower top lr {pa.get('tower_lr', 0.0):g} (0: head only), "
                          f"{pa['steps']} steps of {pa.get('batch_size') or 512} photos, {pa['train_photos']} "
                          f"training photos (the Stage 1 held-out products left out), {pa['seconds']:.0f} s; its "
                          f"held-out photos' own product in the top 10 of all products: "
                          f"{pa['start'].get('heldout_recall@10', float('nan')):.3f} before, "
                          f"{pa['last'].get('heldout_recall@10', float('nan')):.3f} after.", ""]
            lines += ["| query -> product embedding | P@10 same articleType |", "|---|---:|"]
            lines += [f"| {k}{' (served)' if k.startswith('photo head -> fused (') else ''} | {v:.3f} |"
                      for k, v in f["p10_articletype_photo_head"].items()]
            lines += ["", "| text weight | asked colour in top 10 | P@10 same articleType |", "|---:|---:|---:|"]
            lines += [f"| {w} | {m['colour_share_top10']:.3f} | {m['p10_articletype']:.3f} |"
                      for w, m in f["colour_photo_head"]["by_weight"].items()]
            lines.append("")
        lines += expansion_markdown(f)
    fs = r.get("fashion_stage1")
    if fs:
        lines += ["## Fashion after Stage 1 with the image -> product term", "", *stamp(fs),
                  f"Same settings as the reference Stage 1 run ({fs['steps']} steps, batch {fs['batch_size']}, "
                  f"{fs['image_size']} px, frozen cached image tower) plus image_product_weight "
                  f"{fs['image_product_weight']}; run {fs['run']}. Embedded and ranked: the catalog's first "
                  f"{fs['n_products_ranked']} products (both runs; queries with a relevant product among them).", "",
                  f"Text -> product NDCG@10 on the {fs['n_text_queries']} held-out dev queries (Stage 1 text tower "
                  f"as query encoder, those products ranked):", ""]
        lines += [f"- {k}: **{v:.3f}**" for k, v in fs["text_ndcg10_heldout"].items()]
        ref = fs["reference_same_products"]
        lines += ["", f"{fs['n_queries']} held-out photos among those products.", "",
                  "| query -> product embedding | P@10 same articleType, with the term | reference run |",
                  "|---|---:|---:|"]
        lines += [f"| {shown(k, fs)} | {v:.3f} | {ref['p10_articletype'][k]:.3f} |"
                  for k, v in fs["p10_articletype"].items() if k in ref["p10_articletype"]]
        lines += ["", "| text weight | asked colour in top 10 | P@10 same articleType | reference: colour | reference: P@10 |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {w} | {m['colour_share_top10']:.3f} | {m['p10_articletype']:.3f} | "
                  f"{ref['colour']['by_weight'][w]['colour_share_top10']:.3f} | {ref['colour']['by_weight'][w]['p10_articletype']:.3f} |"
                  for w, m in fs["colour"]["by_weight"].items()]
        lines.append("")
    if lat:
        lines += ["## Latency (one process, one run)", "", *stamp(lat),
                  f"model {lat['model']}, index of {lat['n_index']} products ({lat['index']}); {lat['n_text']} text queries, "
                  f"{lat['n_image']} photos ({lat['photo_size']}"
                  + (f", read at {lat['photo_read_at']} px" if lat.get("photo_read_at") else "")
                  + f"), k=24, {lat['torch_threads']} torch threads.", "",
                  f"text p50 {lat['text_p50_ms']:.1f} ms, photo p50 {lat['image_p50_ms']:.1f} ms: "
                  f"ratio **{lat['ratio']:.2f}** (target <= 3)."
                  + (f" With photo query expansion (m {lat['expansion_m']}, not served by default): photo p50 "
                     f"{lat['image_expanded_p50_ms']:.1f} ms." if lat.get("expansion_m") else ""), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/exp")
    p.add_argument("--grocery-epochs", type=int, default=3)
    p.add_argument("--image-product-weight", type=float, default=1.0)
    p.add_argument("--photo-regression-weight", type=float, default=10.0, help="grocery: the photo head's "
                   "cosine term (PhotoAlignConfig.regression_weight)")
    p.add_argument("--photo-epochs", type=int, default=None, help="grocery: photo alignment epochs on the Stage 1 "
                   "model (default: align-photos'; 0: none)")
    p.add_argument("--photo-tower-lr", type=float, default=None, help="grocery: train the photo side's own copy of "
                   "the tower's last stage at this lr (default: align-photos'; 0: the head alone)")
    p.add_argument("--fashion-model", default="runs/demo/stage1/model")
    p.add_argument("--fashion-embeddings", default="runs/demo/embeddings")
    p.add_argument("--fashion-catalog", default="runs/demo/catalog")
    p.add_argument("--fashion-queries", type=int, default=1000)
    p.add_argument("--fashion-photo-model", nargs="*", default=[], help="models with a photo head (`dashclip "
                   "align-photos` on --fashion-model's product side), e.g. at several photo sizes: each is "
                   "measured, the best on the validation photos in full")
    p.add_argument("--fashion-subset", type=int, default=4096, help="fashion after Stage 1 with the term: embed "
                   "and rank only the catalog's first N products (0: all 44,439; about 30 min on 2 busy cores)")
    p.add_argument("--fashion-cache", default="runs/cache/fashion", help="image-feature caches of the fashion "
                   "catalog (the reference run's, e.g. a link to it, so the tower does not run again)")
    p.add_argument("--text-weights", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--photo-image-weights", type=float, nargs="*", default=[0.25, 0.5, 0.75],
                   help="photo scored against (1 - w) fused + w image (ranking.photo_vectors)")
    p.add_argument("--photo-expansions", type=int, nargs="*", default=[1, 2, 3, 5, 8],
                   help="photo queries also measured expanded with their first m hits (ranking.expand_exactly)")
    p.add_argument("--colour-expansion", type=int, default=3, help="photo + colour queries (and the latency of "
                   "photo queries) also measured expanded with their first m hits (0: not)")
    p.add_argument("--latency-model", default="runs/demo-quick/model")
    p.add_argument("--latency-index", default="runs/demo-quick/index")
    p.add_argument("--latency-n", type=int, default=60)
    p.add_argument("--skip", nargs="*", default=[], choices=["grocery", "fashion", "fashion_stage1", "latency"])
    p.add_argument("--results", default="photo_search", help="results/NAME.json and .md (parts skipped keep "
                   "that file's earlier record)")
    args = p.parse_args()
    from dashclip.training.photo_align import PhotoAlignConfig

    defaults = PhotoAlignConfig()
    args.photo_epochs = defaults.epochs if args.photo_epochs is None else args.photo_epochs
    args.photo_tower_lr = defaults.tower_lr if args.photo_tower_lr is None else args.photo_tower_lr
    result = {"script": "benchmarks/photo_search.py", "commit": _machine.commit(), "machine": _machine.cpu_model()
              + f", {os.cpu_count()} cores",
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_at_start": round(os.getloadavg()[0], 2), "args": vars(args)}
    out = RESULTS / f"{args.results}.json"
    before = json.loads(out.read_text()) if out.is_file() else {}
    for name, fn in (("latency", latency), ("fashion", fashion), ("fashion_stage1", fashion_stage1),
                     ("grocery", grocery)):
        if name in args.skip:
            if name in before:   # a part not run this time keeps its earlier record, stamped with its own run
                result[name] = {"measured": {k: before[k] for k in ("date", "commit", "load_at_start")},
                                **before[name]}
            continue
        t = time.time()
        result[name] = fn(argparse.Namespace(**{**vars(args), "fashion_subset": 0}) if name == "fashion" else args)
        result[name]["bench_seconds"] = round(time.time() - t, 1)
        print(name, json.dumps(result[name])[:600], flush=True)
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
