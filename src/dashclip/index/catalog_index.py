"""The index of a catalog's product embeddings by a model: `dashclip index build` and the demo both
build through `build_catalog_index`, and `dashclip index add | remove` update through `add_products` /
`remove_products` (library code, apart from the CLI module that calls it).

Beside the product embeddings (what text queries search), an index of a model with an image tower holds
a photo index in its `photo/` subdir: the same products, each as `ranking.photo_vectors(fused, image, w)`,
which photo queries search (`serving.search.Searcher.search_image`). Measured in
benchmarks/results/photo_search.md and photo_grocery_sweep.md: a shopper's photo finds look-alike
products through the image term and the product it shows through the fused one. Both indexes are built
and updated together; a reader that finds them out of step (another model, other products) searches
photos in the main index instead."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..clihelp import UserError, console
from ..io import prepare_output_dir
from ..ranking import photo_vectors
from .backends import build_index
from .base import KIND, is_index_dir, now_iso

log = logging.getLogger(__name__)

EMBEDDING_KIND = "fused"  # the product embedding (title grounded in the image)
PHOTO_SUBDIR = "photo"    # the photo index inside an index dir
PHOTO_IMAGE_WEIGHT = 0.5  # w of ranking.photo_vectors; chosen in benchmarks/results/photo_search.md
TUNE_QUERIES = 1000       # queries an approximate index tunes its search setting on (recall to ~0.01)


def catalog_attributes(catalog):
    """The filterable attributes of every product: category + the catalog's attribute columns."""
    columns = ["id"] + [c for c in ("category", *catalog.attributes) if c in catalog.products.columns]
    return catalog.products[list(dict.fromkeys(columns))]


def catalog_embeddings(model, catalog, out: Path, embeddings: Optional[Path], quiet: bool,
                        image_cache: Optional[Path] = None):
    """Product embeddings of `catalog` by `model`: given, reused from a previous build, or computed."""
    from ..io import read_json
    from ..models.embeddings import embed_catalog, load_embeddings

    if embeddings is None:
        embeddings = out.parent / f"{out.name}-embeddings"
        meta_file = embeddings / "meta.json"
        fresh = meta_file.exists() and {k: read_json(meta_file).get(k) for k in ("model_id", "catalog_hash")} \
            == {"model_id": model.model_id, "catalog_hash": catalog.content_hash}
        if fresh:
            console.print(f"reusing product embeddings in {embeddings}")
        else:
            console.print(f"embedding {len(catalog)} products into {embeddings} (resumable)")
            embed_catalog(model, catalog, embeddings, progress=not quiet, image_cache_root=image_cache)
    try:
        emb = load_embeddings(embeddings, model_id=model.model_id, catalog_hash=catalog.content_hash,
                              kind=EMBEDDING_KIND)
    except ValueError as e:
        raise UserError(f"{e} (or leave out --embeddings to embed the catalog with this model)") from None
    return embeddings, emb


def query_sample_vectors(model, queries: Sequence[str], n: int = TUNE_QUERIES, seed: int = 0) -> np.ndarray:
    """The model's vectors of up to `n` distinct queries (a seeded sample), as search encodes them."""
    from ..models.model import to_numpy

    distinct = sorted({str(q).strip() for q in queries if str(q).strip()})
    if len(distinct) > n:
        distinct = [distinct[i] for i in sorted(np.random.default_rng(seed).choice(len(distinct), n, replace=False))]
    return to_numpy(model.encode_query(distinct)).astype(np.float32)


def build_catalog_index(model, model_dir: Path, catalog, out: Path, embeddings: Optional[Path] = None,
                        backend: str = "faiss", factory: Optional[str] = None, uri: Optional[str] = None,
                        quiet: bool = False, image_cache: Optional[Path] = None, overwrite: bool = False,
                        photo_image_weight: Optional[float] = PHOTO_IMAGE_WEIGHT,
                        tune_queries: Optional[Sequence[str]] = None):
    """The index of `catalog`'s product embeddings by `model` (loaded from `model_dir`), with the metadata
    and catalog attributes search needs: `dashclip index build` and the demo both build through here.
    With image embeddings (a model with an image tower, a catalog with images), also the photo index in
    `out/photo/` (`photo_image_weight` None: none).

    `out` is checked before any embedding: it may be missing, empty or an index; another dir only with
    `overwrite`; never one of the inputs or a dir that holds one. `tune_queries`: shoppers' queries (up to
    `TUNE_QUERIES` of them, a seeded sample) on which an approximate FAISS index tunes its search setting;
    without them it tunes on noisy copies of product vectors (`faiss_index.tune_search_setting`)."""
    check_out(out, [catalog.root, model_dir, embeddings], overwrite)
    emb_dir, emb = catalog_embeddings(model, catalog, out, embeddings, quiet, image_cache)
    meta = {"model_id": model.model_id, "model_dir": str(model_dir), "catalog_hash": catalog.content_hash,
            "catalog_dir": str(catalog.root), "embeddings_dir": str(emb_dir), "embedding": EMBEDDING_KIND}
    attributes = catalog_attributes(catalog)
    photo = photo_image_weight is not None and "image" in emb.vectors and \
        (emb.has_image is None or bool(np.any(emb.has_image)))
    photo_dir = Path(out) / PHOTO_SUBDIR
    if photo:
        meta["photo_index"] = {"dir": PHOTO_SUBDIR, "image_weight": photo_image_weight}

    options = {}
    if tune_queries is not None and len(tune_queries):
        if backend != "faiss":
            raise ValueError(f"tuning on queries is for the faiss backend, not {backend}")
        # encoded only if the index tunes a setting (an exact one does not)
        options["tune_queries"] = lambda: query_sample_vectors(model, tune_queries)

    def build_main():
        return build_index(emb.vectors[EMBEDDING_KIND], emb.ids, out, meta=meta, backend=backend,
                           factory=factory, attributes=attributes, uri=uri, progress=not quiet,
                           overwrite=overwrite, **options)

    def build_photo():
        vectors = product_photo_vectors(emb.vectors[EMBEDDING_KIND], emb.vectors["image"], emb.has_image,
                                        photo_image_weight)
        photo_meta = {**{k: v for k, v in meta.items() if k != "photo_index"}, "embedding": "photo",
                      "photo_image_weight": photo_image_weight}
        build_index(vectors, emb.ids, photo_dir, meta=photo_meta, backend=backend, factory=factory,
                    attributes=attributes, uri=photo_uri(uri), progress=not quiet)

    if not photo:
        if photo_dir.is_dir() and is_index_dir(photo_dir):
            shutil.rmtree(photo_dir)  # an earlier build's photo index, of another model or catalog
        return build_main()
    # The main meta.json switch is the commit point a serving process watches (serving.service), so a
    # rebuild writes the photo index first; a first build must write the main index first (its dir
    # would not be an index yet), and nobody reads it until then.
    if is_index_dir(out):
        build_photo()
        return build_main()
    index = build_main()
    build_photo()
    return index


def product_photo_vectors(fused: np.ndarray, image: np.ndarray, has_image, weight: float) -> np.ndarray:
    """The photo index's vectors (`ranking.photo_vectors`); a product without a readable image keeps only
    its fused term (its image embedding is of a blank stand-in, which no photo should match)."""
    image = np.asarray(image, dtype=np.float32)
    if has_image is not None and not np.all(has_image):
        image = np.where(np.asarray(has_image, dtype=bool)[:, None], image, 0.0)
    return photo_vectors(fused, image, weight)


def photo_uri(uri: Optional[str]) -> Optional[str]:
    """Milvus Lite keeps each index in its own .db file (the default, inside each dir); a server holds both."""
    return uri if uri and "://" in uri else None


def open_photo_index(index, model_id: Optional[str] = None):
    """The photo index beside an opened index, or None when it has none or it is out of step with it (built
    with another model, or holding other products: e.g. a build killed between the two)."""
    from .backends import open_index

    return _photo_index(index, lambda path: open_index(path, model_id=model_id or index.meta.get("model_id")))


def _photo_index(index, opener):
    """The photo index `index.meta` names, opened by `opener(path)` (open_index, or `updating` entered on
    an ExitStack), or None with a warning when it cannot be used."""
    spec = index.meta.get("photo_index")
    if not spec:
        return None
    path = Path(index.path) / spec["dir"]
    try:
        photo = opener(path)
    except (FileNotFoundError, ValueError) as e:
        log.warning("photo index %s not used (%s); photos search the main index", path, e)
        return None
    if len(photo) != len(index) or photo.meta.get("model_id") != index.meta.get("model_id"):
        log.warning("photo index %s is out of step with %s (%d vs %d products); photos search the main index",
                    path, index.path, len(photo), len(index))
        return None
    return photo


def check_out(out: Path, inputs: list, overwrite: bool) -> None:
    """Refuse a bad --out now, before any long work (build_index checks again, then writes)."""
    prepare_output_dir(out, KIND, inputs, overwrite, is_kind=is_index_dir, check_only=True)


def add_products(index_dir: Path, model, catalog, ids: Optional[list] = None, batch_size: int = 64,
                 image_cache: Optional[Path] = None, progress=None) -> list:
    """Embed catalog products and add them to the index at `index_dir` and to its photo index, each saved
    atomically under its write lock (held from the read to the save, so concurrent writers wait their
    turn). `ids`: catalog ids (coerced to the catalog's id type); None: every catalog product not yet in
    the index. An id not in the catalog, or already in the index, is a UserError naming it. Each added
    product gets the vectors a rebuild would give it (same precision, Stage 1's cached image features
    where there are some). `progress(n)` is called after each batch. Returns the ids added."""
    import contextlib

    from ..models.embeddings import CachedImageFeatures, embed_batches
    from ..settings import image_cache_dir
    from .backends import updating

    with contextlib.ExitStack() as stack:
        index = stack.enter_context(updating(index_dir, model_id=model.model_id))
        wanted = _wanted_ids(index, catalog, ids)
        if not wanted:
            return []
        photo = _photo_index(index, lambda path: stack.enter_context(updating(path, model_id=model.model_id)))
        kinds = (EMBEDDING_KIND, "image") if photo is not None else (EMBEDDING_KIND,)
        rows = np.array([catalog.row_of[pid] for pid in wanted])
        cached = CachedImageFeatures.find(model, catalog, image_cache or image_cache_dir())
        vectors = {k: np.zeros((len(rows), model.embed_dim), np.float32) for k in kinds}
        has_image = np.zeros(len(rows), dtype=bool)
        for batch, vecs, ok in embed_batches(model.eval(), catalog, catalog.product_texts(), rows, batch_size,
                                             kinds, cached):
            for k in kinds:
                vectors[k][batch] = vecs[k]
            has_image[batch] = ok
            if progress is not None:
                progress(len(batch))
        attrs = catalog_attributes(catalog).iloc[rows]
        if photo is not None:  # the photo index first: a failure here leaves both as they were
            photo.add(wanted, product_photo_vectors(vectors[EMBEDDING_KIND], vectors["image"], has_image,
                                                    index.meta["photo_index"]["image_weight"]), attrs)
            _save(photo)
        index.add(wanted, vectors[EMBEDDING_KIND], attrs)
        _save(index)
    return wanted


def remove_products(index_dir: Path, ids: list) -> None:
    """Remove products from the index at `index_dir` and from its photo index (each saved atomically
    under its write lock). An id not in the index is a ValueError naming it; nothing is removed then."""
    import contextlib

    from .backends import updating

    with contextlib.ExitStack() as stack:
        index = stack.enter_context(updating(index_dir))
        photo = _photo_index(index, lambda path: stack.enter_context(updating(path)))
        index.remove(ids)  # checks every id before anything is removed
        if photo is not None:
            photo.remove(ids)
            _save(photo)
        _save(index)


def _save(index) -> None:
    index.meta["updated_at"] = now_iso()
    index.save()


def _wanted_ids(index, catalog, ids: Optional[list]) -> list:
    if ids is None:
        return [pid for pid in catalog.products["id"].tolist() if not index.has(pid)]
    wanted = []
    for raw in ids:
        try:
            pid = catalog.coerce_id(raw)
        except KeyError:
            pid = None
        if pid is None or pid not in catalog.row_of:
            raise UserError(f"--ids: product id {raw!r} is not in the catalog {catalog.root}")
        if index.has(pid):
            raise UserError(f"--ids: product id {raw!r} is already in the index {index.path}")
        wanted.append(pid)
    return wanted
