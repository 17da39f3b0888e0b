"""Product embeddings of a whole catalog (`dashclip embed-catalog`), and reading them back.

An embeddings dir holds, row i for product ids[i]:
    ids.parquet     columns `id`, `has_image` (False: no readable image; a blank white image stood in)
    fused.npy       the product embedding (title grounded in the image)   float32 [N, D], L2-normalised
    image.npy       image tower + projection
    text.npy        text tower + projection
    meta.json       model_id, catalog_hash, dim, n, kinds, built_at, seconds

Embedding runs in chunks; each finished chunk is kept in `<out>.partial/`, so a killed run resumes
where it stopped. The final dir is written atomically, then the partial chunks are removed.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..io import atomic_dir, atomic_path, read_json, write_json
from .batching import length_batches

KINDS = ("fused", "image", "text")


@dataclass
class ProductEmbeddings:
    ids: np.ndarray
    vectors: dict
    meta: dict
    has_image: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def load_embeddings(path: str | Path, mmap: bool = True, model_id: str | None = None,
                    catalog_hash: str | None = None, kind: str | None = None) -> ProductEmbeddings:
    """An embeddings dir (`dashclip embed-catalog`). The one place their origin is checked: with
    `model_id`, embeddings made by another model are a ValueError; with `catalog_hash`, embeddings of
    another catalog (an unrecorded hash passes); with `kind`, a dir without `<kind>.npy`."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path}: not an embeddings dir (no meta.json); run `dashclip embed-catalog`")
    meta = read_json(path / "meta.json")
    if model_id is not None and meta.get("model_id") != model_id:
        raise ValueError(f"{path}: embeddings were made with model {meta.get('model_id')}, not {model_id}; "
                         f"embed the catalog with this model (`dashclip embed-catalog`)")
    if catalog_hash and meta.get("catalog_hash") not in (None, "", catalog_hash):
        raise ValueError(f"{path}: embeddings are of another catalog (hash {meta.get('catalog_hash')}, not "
                         f"{catalog_hash}); embed this catalog (`dashclip embed-catalog`)")
    table = pd.read_parquet(path / "ids.parquet")
    vectors = {}
    for kind in meta.get("kinds", KINDS):
        f = path / f"{kind}.npy"
        if f.exists():
            vectors[kind] = np.load(f, mmap_mode="r" if mmap else None)
            if len(vectors[kind]) != len(table):
                raise ValueError(f"{f}: {len(vectors[kind])} rows but ids.parquet has {len(table)}")
    if kind is not None and kind not in vectors:
        raise ValueError(f"{path}: no {kind}.npy (it has {', '.join(vectors) or 'no vectors'})")
    has_image = table["has_image"].to_numpy() if "has_image" in table else None
    return ProductEmbeddings(ids=table["id"].to_numpy(), vectors=vectors, meta=meta, has_image=has_image)


def _product_images(catalog, rows):
    """PIL images of the products at `rows`; a missing/unreadable image becomes a white square
    (the product still gets a text-driven embedding) and is flagged in `has_image`."""
    from PIL import Image

    from ..data.images import ImageError, load_image

    images, ok = [], []
    for rel in catalog.products["image"].iloc[rows]:
        path = catalog.image_path(rel) if isinstance(rel, str) and rel else None
        try:
            images.append(load_image(path) if path else None)
        except (ImageError, OSError):
            images.append(None)
        ok.append(images[-1] is not None)
        if images[-1] is None:
            images[-1] = Image.new("RGB", (32, 32), (255, 255, 255))
    return images, ok


class CachedImageFeatures:
    """Image-tower outputs of a catalog's primary images from a Stage 1 feature cache
    (models/feature_cache.py), when one exists for this model's image tower and preprocessing.
    With the image tower frozen in Stage 1 (the CPU mode) the tower's output is the same as at
    training time, so embedding the catalog need not run the tower again: on the fashion catalog
    that is most of the embedding time."""

    def __init__(self, cache, primary_image: np.ndarray):
        self.cache, self.primary = cache, primary_image

    @classmethod
    def find(cls, model, catalog, cache_root) -> "CachedImageFeatures | None":
        from .feature_cache import find

        images = catalog.image_index()
        cache = find(model, images.paths, cache_root)   # keyed by the tower's weights: never stale
        if cache is None:
            return None
        return cls(cache, images.without_images(~cache.valid).primary)

    def features(self, rows: np.ndarray):
        """(patches, pooled, cached mask) for product `rows`; rows without a cached image get zeros."""
        idx = self.primary[rows]
        hit = idx >= 0
        patches = torch.zeros((len(rows), *self.cache.patches.shape[1:]))
        pooled = torch.zeros((len(rows), self.cache.pooled.shape[1]))
        if hit.any():
            patches[torch.from_numpy(hit)], pooled[torch.from_numpy(hit)] = self.cache.features(idx[hit])
        return patches, pooled, hit


def image_inputs(model, catalog, rows: np.ndarray, cached: CachedImageFeatures | None = None):
    """The image side of `embed_rows` short of running the tower, so it can be prepared ahead
    (`read_ahead`): (cached patches, cached pooled, positions that need the tower, their preprocessed
    pixels, has-image flags). Without `cached` every row needs the tower; with it only the rows the
    cache lacks."""
    if cached is None:
        images, ok = _product_images(catalog, rows)
        return None, None, np.arange(len(rows)), model.preprocess(images), ok
    patches, pooled, hit = cached.features(rows)
    ok, todo, pixels = hit.tolist(), np.flatnonzero(~hit), None
    if len(todo):      # not in the cache: the tower runs on the image (a white stand-in if unreadable)
        images, ok_todo = _product_images(catalog, rows[todo])
        pixels = model.preprocess(images)
        for j, good in zip(todo, ok_todo):
            ok[j] = good
    return patches, pooled, todo, pixels, ok


@torch.inference_mode()
def embed_rows(model, texts: list[str], rows: np.ndarray, inputs: tuple, kinds=KINDS) -> tuple[dict, list[bool]]:
    """Embeddings of the catalog products at `rows`: one pass of each tower serves every kind. `inputs`:
    their `image_inputs`; the image tower runs only on the rows those leave to it. A model that embeds rows
    itself (the ONNX backend, `models/onnx_model.py`) is handed the same inputs."""
    if hasattr(model, "embed_rows"):
        return model.embed_rows(texts, rows, inputs, kinds)
    if inputs is None:          # text-only (embed_catalog(text_only=True)): the product embedding is the text's
        tok = model.tokenize([texts[r] for r in rows])
        _, text_pooled = model.text_features(tok["input_ids"].to(model.device), tok["attention_mask"].to(model.device))
        text = F.normalize(model.project_text(text_pooled).float(), dim=-1).cpu().numpy()
        return {k: text for k in kinds}, [False] * len(rows)
    patches, pooled, todo, pixels, ok = inputs
    if patches is not None:
        patches, pooled = patches.to(model.device), pooled.to(model.device)
    if pixels is not None:
        p, q = model.image_features(pixels.to(model.device))
        if patches is None:
            patches, pooled = p, q
        else:
            index = torch.from_numpy(todo).to(model.device)
            patches[index], pooled[index] = p.to(patches.dtype), q.to(pooled.dtype)
    tok = model.tokenize([texts[r] for r in rows])
    ids, mask = tok["input_ids"].to(model.device), tok["attention_mask"].to(model.device)
    tokens, text_pooled = model.text_features(ids, mask)
    out = {}
    if "fused" in kinds:
        out["fused"] = model.project_fused(model.fuse(tokens, mask, patches))
    if "image" in kinds:
        out["image"] = model.project_image(pooled)
    if "text" in kinds:
        out["text"] = model.project_text(text_pooled)
    # float32 before normalising again: under bf16 autocast a unit vector is only unit to ~1e-2
    return {k: F.normalize(v.float(), dim=-1).cpu().numpy() for k, v in out.items()}, ok


def embed_batches(model, catalog, texts: list[str], rows: np.ndarray, batch_size: int = 64, kinds=KINDS,
                  cached: CachedImageFeatures | None = None, amp: str | None = "auto", text_only: bool = False):
    """Embed the catalog products at `rows` batch by batch, under `amp` (dashclip.precision); `texts[r]` is
    row r's text (a list of every product's, or a dict of just these rows'); yields
    (positions in `rows`, embeddings by kind, has-image flags). A batch holds products of similar text
    length, so it pads little, and where images must be decoded the next batch's are decoded while the
    towers run on this one. On 2 CPU cores, where the towers use both, that saves ~3% (4,096 fashion
    products without a feature cache, medians of 6 runs: 30.9 s against 31.8 s, 2026-12-02); it is there
    for a GPU, where the towers are fast and decoding on the main thread would leave them waiting (not
    measured here)."""
    from ..data.images import read_ahead
    from ..precision import autocast

    rows = np.asarray(rows)
    batches = length_batches([len(texts[r]) for r in rows], batch_size)

    def load(batch):
        return None if text_only else image_inputs(model, catalog, rows[batch], cached)
    # On CPU, with Stage 1's features cached, there is little left to load, and a loader thread only
    # competes with the towers' own threads: 7% slower on 8,192 products, so those are loaded in turn.
    ahead = not text_only and (cached is None or model.device.type != "cpu")
    prepared = read_ahead(load, batches) if ahead else map(load, batches)
    for batch, inputs in zip(batches, prepared):
        with autocast(model.device, amp):
            vecs, ok = embed_rows(model, texts, rows[batch], inputs, kinds)
        yield batch, vecs, ok


def embed_catalog(model, catalog, out_dir: str | Path, batch_size: int = 64, kinds=KINDS,
                  progress: bool = True, chunk_size: int = 4096, image_cache_root: str | Path | None = None,
                  amp: str | None = "auto", text_only: bool = False, ray: "RayEmbedding | None" = None) -> Path:
    """Embed every product of `catalog` (a Catalog or its dir) with `model`; see the module doc.
    `text_only`: a catalog without images (or a shop that skips Stage 1): no image is read and the image
    tower never runs; the product embedding (`fused.npy`) is the text embedding, and only the kinds
    `fused` and `text` are written.
    `image_cache_root`: where Stage 1 keeps image-feature caches (default: settings.image_cache_dir(),
    where `dashclip pretrain` puts them); one made for this model's image tower, preprocessing and
    this catalog's images is used instead of running the tower (see CachedImageFeatures).
    `amp`: precision (dashclip.precision; "auto" is bf16 where the hardware has it, as Stage 1 trains;
    None: float32). Within a chunk, products are batched by text length, so a batch pads little.
    `ray`: the chunks are computed by a pool of Ray actors (`dashclip.parallel`), each loading the model
    from `ray.model_dir`; the chunk files and the result are the ones this process would write."""
    from ..clihelp import progress as progress_bar
    from ..data.catalog import Catalog
    from ..precision import resolve_amp
    from ..settings import image_cache_dir

    catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
    out_dir = Path(out_dir)
    kinds = tuple(k for k in kinds if k != "image") if text_only else tuple(kinds)
    # an ONNX model has one precision, its export's ("onnx-fp32", "onnx-int8"); torch's is `amp`'s
    precision = getattr(model, "precision", None) or resolve_amp(amp, model.device) or "fp32"
    meta = {"model_id": model.model_id, "catalog_hash": catalog.content_hash, "catalog_dir": str(catalog.root),
            "dim": model.embed_dim, "n": len(catalog), "kinds": list(kinds), "chunk_size": chunk_size,
            "precision": precision, "product_embedding": "text" if text_only else "fused"}
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        old = read_json(partial / "meta.json") if (partial / "meta.json").exists() else {}
        if any(old.get(k) != meta[k] for k in ("model_id", "catalog_hash", "kinds", "chunk_size", "n", "precision",
                                             "product_embedding")):
            shutil.rmtree(partial)          # another model or catalog: nothing to resume
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / "meta.json", meta)

    n = len(catalog)
    n_chunks = (n + chunk_size - 1) // chunk_size
    job = ChunkJob(partial, chunk_size, n, tuple(kinds), batch_size, amp, text_only,
                   str(image_cache_root or image_cache_dir()))
    todo = [i for i in range(n_chunks) if not job.chunk_file(i).exists()]
    t0 = time.time()
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("embedding products", total=n)
        bar.advance(task, n - sum(job.rows(i)[1] - job.rows(i)[0] for i in todo))
        if ray is not None:
            from functools import partial as bind

            from ..parallel import map_shards

            from .feature_cache import find

            meta["ray"] = {"workers": ray.workers, "address": ray.address or "local"}
            meta["image_features"] = _features_note(text_only, None if text_only else find(
                model, catalog.image_index().paths, job.image_cache_root))
            map_shards(todo, bind(ChunkEmbedder, ray.model_dir, ray.backend, str(catalog.root), job),
                       workers=ray.workers, address=ray.address, threads_per_worker=ray.threads_per_worker,
                       on_result=lambda r: bar.advance(task, int(r["n"])))
        else:
            cached = None if text_only else CachedImageFeatures.find(model, catalog, job.image_cache_root)
            meta["image_features"] = _features_note(text_only, cached and cached.cache)
            was_training = model.training
            model.eval()
            texts = catalog.product_texts()
            for i in todo:
                job.embed_chunk(model, catalog, texts, i, cached, advance=lambda k: bar.advance(task, k))
            model.train(was_training)

    chunks = [np.load(job.chunk_file(i)) for i in range(n_chunks)]
    has_image = np.concatenate([c["has_image"] for c in chunks]) if chunks else np.zeros(0, bool)
    with atomic_dir(out_dir) as tmp:
        pd.DataFrame({"id": catalog.products["id"].to_numpy(), "has_image": has_image}).to_parquet(tmp / "ids.parquet")
        for k in kinds:
            arr = np.concatenate([c[k] for c in chunks]) if chunks else np.zeros((0, model.embed_dim), np.float32)
            np.save(tmp / f"{k}.npy", arr.astype(np.float32))
        write_json(tmp / "meta.json", {**meta, "n_without_image": int((~has_image).sum()),
                                       "seconds": round(time.time() - t0, 1),
                                       "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def _features_note(text_only: bool, cache) -> str:
    return "none (text only)" if text_only else f"cache {cache.path.name}" if cache is not None else "image tower"


@dataclass(frozen=True)
class RayEmbedding:
    """`embed_catalog` on Ray: the model dir each actor loads (and its runtime), the pool size, the cluster
    (None: a local Ray), and each actor's CPU threads."""
    model_dir: str
    backend: str = "auto"
    workers: int = 2
    address: str | None = None
    threads_per_worker: int = 1


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk of one embedding run shares: where chunks go and how they are computed. One
    chunk, `embed_chunk`, is the unit of work and of resumption, in this process and on a Ray actor."""
    partial: Path
    chunk_size: int
    n: int
    kinds: tuple
    batch_size: int
    amp: str | None
    text_only: bool
    image_cache_root: str

    def chunk_file(self, i: int) -> Path:
        return Path(self.partial) / f"chunk-{i:05d}.npz"

    def rows(self, i: int) -> tuple[int, int]:
        return i * self.chunk_size, min((i + 1) * self.chunk_size, self.n)

    def embed_chunk(self, model, catalog, texts, i: int, cached=None, advance=None) -> int:
        """Embed chunk i's products and write its file atomically; returns how many products it held."""
        start, stop = self.rows(i)
        parts = {k: np.zeros((stop - start, model.embed_dim), np.float32) for k in self.kinds}
        ok_all = np.zeros(stop - start, dtype=bool)
        for batch, vecs, ok in embed_batches(model, catalog, texts, np.arange(start, stop), self.batch_size,
                                             self.kinds, cached, self.amp, self.text_only):
            for k in self.kinds:
                parts[k][batch] = vecs[k]
            ok_all[batch] = ok
            if advance is not None:
                advance(len(batch))
        with atomic_path(self.chunk_file(i)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, has_image=ok_all, **parts)
        return stop - start


class ChunkEmbedder:
    """A Ray actor's worker (`dashclip.parallel.map_shards`): loads the model and the catalog once, then
    embeds one chunk per call."""

    def __init__(self, model_dir: str, backend: str, catalog_dir: str, job: ChunkJob):
        from ..data.catalog import Catalog
        from .runtime import load_model

        self.job = job
        self.model = load_model(model_dir, backend, device="cpu")
        self.model.eval()
        self.catalog = Catalog.open(catalog_dir)
        self.texts = self.catalog.product_texts()
        self.cached = None if job.text_only else CachedImageFeatures.find(self.model, self.catalog,
                                                                          job.image_cache_root)

    def __call__(self, i: int) -> dict:
        t0 = time.time()
        n = self.job.embed_chunk(self.model, self.catalog, self.texts, i, self.cached)
        return {"shard": i, "n": n, "seconds": round(time.time() - t0, 2), "pid": os.getpid()}
