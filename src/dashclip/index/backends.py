"""`build_index` and `open_index`: the one place that picks a backend by name (architecture §5).

Apart from base.py, which every backend imports, so that the interface never imports its backends:
the backends are imported here, when first used (FAISS and Milvus are heavy imports)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .base import (BACKENDS, FORMAT_VERSION, META_FILE, METRIC, REBUILD_HINT, VectorIndex, as_vectors,
                   attribute_frame, normalise_ids, now_iso, read_meta)


def build_index(vectors: np.ndarray, ids: Sequence, out_dir: str | Path, meta: dict | None = None,
                backend: str = "faiss", factory: str | None = None,
                attributes: pd.DataFrame | None = None, uri: str | None = None,
                progress: bool = False, **options) -> VectorIndex:
    """Build an index of `vectors` (row i is product `ids[i]`) at `out_dir`, atomically.

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
    full_meta = dict(meta or {})
    full_meta.update(format_version=FORMAT_VERSION, backend=backend, dim=int(vectors.shape[1]),
                     metric=METRIC, n=len(ids), id_type=kind, built_at=now_iso(),
                     attributes=[c for c in table.columns if c != "id"])
    if backend == "faiss":
        from .faiss_index import FaissIndex
        return FaissIndex.build(vectors, table, out_dir, full_meta, factory=factory, progress=progress, **options)
    from .milvus_index import MilvusIndex
    return MilvusIndex.build(vectors, table, out_dir, full_meta, factory=factory, uri=uri, progress=progress,
                             **options)


def open_index(path: str | Path, model_id: str | None = None) -> VectorIndex:
    """Open an index dir. With `model_id`, an index built with another model is a clear ValueError."""
    path = Path(path)
    meta = read_meta(path)
    built_with = meta.get("model_id")
    if model_id is not None and built_with is not None and str(built_with) != str(model_id):
        raise ValueError(f"{path}: index was built with model {built_with}, not {model_id}; "
                         f"{REBUILD_HINT}")
    if meta["backend"] == "faiss":
        from .faiss_index import FaissIndex
        return FaissIndex.open(path, meta)
    if meta["backend"] == "milvus":
        from .milvus_index import MilvusIndex
        return MilvusIndex.open(path, meta)
    raise ValueError(f"{path / META_FILE}: unknown backend {meta['backend']!r}; {REBUILD_HINT}")
