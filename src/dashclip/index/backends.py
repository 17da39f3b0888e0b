"""`build_index`, `open_index` and `updating`: the one place that picks a backend by name (architecture §5).

Apart from base.py, which every backend imports, so that the interface never imports its backends:
the backends are imported here, when first used (FAISS and Milvus are heavy imports)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import LOCK_FILE, dir_lock, prepare_output_dir
from .base import (BACKENDS, FORMAT_VERSION, KIND, META_FILE, METRIC, PATH_KEYS, REBUILD_HINT, VectorIndex,
                   _read_meta_quiet, as_vectors, attribute_frame, data_dir, is_index_dir, normalise_ids, now_iso,
                   read_meta, stored_path)


def build_index(vectors: np.ndarray, ids: Sequence, out_dir: str | Path, meta: dict | None = None,
                backend: str = "faiss", factory: str | None = None,
                attributes: pd.DataFrame | None = None, uri: str | None = None,
                progress: bool = False, overwrite: bool = False, inputs: Sequence = (),
                **options) -> VectorIndex:
    """Build an index of `vectors` (row i is product `ids[i]`) at `out_dir`, atomically.

    `out_dir` may be missing, empty or an index (replaced atomically, under its write lock); another
    non-empty dir is refused unless `overwrite` (its contents are deleted then), and it may not be or
    contain one of `inputs` (the catalog, embeddings, model dirs). Paths in `meta` (catalog_dir,
    embeddings_dir, model_dir) are stored relative to the index dir, so it opens from any working dir.

    backend "faiss": exact `Flat` below `EXACT_MAX` vectors, `HNSW32,Flat` above (efSearch tuned at build
    and stored in meta), or any FAISS factory string. backend "milvus": a Milvus collection at `uri`
    (default: Milvus Lite in `<out_dir>/milvus.db`); `factory` is then a Milvus index type (FLAT, HNSW, ...).
    `options` go to the backend (FAISS: `ef_construction`; `ef_search` or `k_factor` to skip tuning).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown index backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    ids, kind = normalise_ids(ids)
    vectors = as_vectors(vectors, len(ids))
    if not ids:
        raise ValueError("cannot build an index of 0 products")
    table = attribute_frame(ids, attributes)
    out_dir = Path(out_dir)
    full_meta = dict(meta or {})
    inputs = [*inputs, *(full_meta[k] for k in PATH_KEYS if full_meta.get(k))]
    prepare_output_dir(out_dir, KIND, inputs, overwrite, is_kind=is_index_dir)
    for key in PATH_KEYS:
        if full_meta.get(key):
            full_meta[key] = stored_path(full_meta[key], out_dir)
    full_meta.update(kind=KIND, format_version=FORMAT_VERSION, backend=backend, dim=int(vectors.shape[1]),
                     metric=METRIC, n=len(ids), id_type=kind, built_at=now_iso(),
                     attributes=[c for c in table.columns if c != "id"])
    created = not out_dir.exists()
    try:
        with dir_lock(out_dir, "index"):
            if backend == "faiss":
                from .faiss_index import FaissIndex
                return FaissIndex.build(vectors, table, out_dir, full_meta, factory=factory,
                                        progress=progress, **options)
            from .milvus_index import MilvusIndex
            return MilvusIndex.build(vectors, table, out_dir, full_meta, factory=factory, uri=uri,
                                     progress=progress, **options)
    except BaseException:
        if created:  # a failed first build leaves no dir behind (only its lock file was written)
            (out_dir / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def open_index(path: str | Path, model_id: str | None = None) -> VectorIndex:
    """Open an index dir. With `model_id`, an index built with another model is a clear ValueError."""
    path = Path(path)
    for attempt in range(3):
        meta = read_meta(path)
        built_with = meta.get("model_id")
        if model_id is not None and built_with is not None and str(built_with) != str(model_id):
            raise ValueError(f"{path}: index was built with model {built_with}, not {model_id}; "
                             f"{REBUILD_HINT}")
        try:
            if meta["backend"] == "faiss":
                from .faiss_index import FaissIndex
                return FaissIndex.open(path, meta, data_dir(path, meta))
            if meta["backend"] == "milvus":
                from .milvus_index import MilvusIndex
                return MilvusIndex.open(path, meta, data_dir(path, meta))
        except FileNotFoundError:
            # saved twice while we read: the data subdir our meta.json named is gone; read meta.json again
            if attempt == 2 or _read_meta_quiet(path) == meta:
                raise
            continue
        raise ValueError(f"{path / META_FILE}: unknown backend {meta['backend']!r}; {REBUILD_HINT}")


@contextlib.contextmanager
def updating(path: str | Path, model_id: str | None = None, timeout: float | None = None):
    """Open an index for a read-modify-write (`add`/`remove`, then `save()`), holding the dir's write lock
    from the read to the end of the block: concurrent writers serialize and none loses another's changes.
    Another process holding it longer than `timeout` s (default `dashclip.io.LOCK_TIMEOUT`) is a DirLocked
    error naming its pid."""
    path = Path(path)
    read_meta(path)  # a missing index is an error here, not a new dir made by the lock
    kw = {} if timeout is None else {"timeout": timeout}
    with dir_lock(path, "index", **kw):
        yield open_index(path, model_id)


SEARCH_DEFAULTS_KEY = "search"     # meta.json: how this index is searched when the caller does not say


def search_defaults(meta: dict) -> dict:
    """The index's recorded search defaults, e.g. {"hybrid": True, "why": "..."} ({} when none)."""
    return dict(meta.get(SEARCH_DEFAULTS_KEY) or {})


def set_search_defaults(path: str | Path, hybrid: bool, why: str = "") -> dict:
    """Record in the index how it is searched by default (`hybrid`: BM25 fused with the vectors), e.g. as
    chosen by the pipeline on its evaluation grades; `dashclip search` and `serve` follow it unless told
    otherwise (`--hybrid` / `--dense`). Written under the index's write lock, switched atomically."""
    with updating(path) as index:
        index.meta[SEARCH_DEFAULTS_KEY] = {"hybrid": bool(hybrid), **({"why": why} if why else {})}
        index.save()
        return search_defaults(index.meta)
