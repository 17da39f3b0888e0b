"""The embedded backend: a FAISS index in one directory (`index.faiss` + ids + attributes + meta).

Vectors live in an `IndexIDMap2` over the factory's index, keyed by an int64 *label* per product (never
reused). ids.parquet maps labels to the catalog's product ids. Filters become an `IDSelectorBitmap`
passed through SearchParameters (exact for Flat); index types that reject a selector (refining ones) fall
back to over-fetching and post-filtering. Index types that cannot delete (HNSW, refining ones) keep removed
vectors as tombstones that every search excludes, until the next `dashclip index build`.

Approximate index types have one setting that trades speed for recall, tuned at build time to reach
recall@10 >= 0.95 and stored in meta: HNSW's `ef_search`, or, for a refining index such as
`PQ128x4fs,RFlat` (a compressed scan of every vector whose best candidates are re-ranked exactly),
`k_factor`, the candidates re-ranked per result wanted.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from .base import IDS_FILE, REBUILD_HINT, VectorIndex, read_table

INDEX_FILE = "index.faiss"
EXACT_MAX = 200_000           # below this many vectors the default is exact search
DEFAULT_HNSW = "HNSW32,Flat"
HNSW_EF_CONSTRUCTION = 80     # build cost vs graph quality: benchmarks/results/index_scale.md
EF_SEARCH_CANDIDATES = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
K_FACTOR_CANDIDATES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
TUNE_RECALL_TARGET = 0.95
ADD_CHUNK = 50_000


def default_factory(n: int) -> str:
    return "Flat" if n < EXACT_MAX else DEFAULT_HNSW


def single_thread_searches() -> None:
    """FAISS searches made from now on by the calling thread run on that thread alone, with no OpenMP team.

    For a service's searching threads: they search a few queries at a time, where a team of threads costs
    more than it gives. Its idle threads spin between calls and take the cores the query encoder (torch's
    own OpenMP team, or ONNX Runtime) and the HTTP server need next. OpenMP's thread count belongs to the
    thread that sets it, so this must run in the thread that searches. Where torch was imported before
    FAISS, the two share one OpenMP runtime and torch's ops on that thread run on one thread too
    (`dashclip serve` imports FAISS first). Measured on 2 cores with the demo's 44K-product exact index: the
    service's CPU per request at concurrency 1 halved (README, "Fast CPU serving")."""
    faiss.omp_set_num_threads(1)


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Row indices of the exact top-k by inner product (numpy; used to tune and to measure recall)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        s = queries @ vectors[start:start + chunk].T
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def search_setting(index: faiss.Index) -> str | None:
    """Name of the setting that trades this index's speed for recall, or None (exact, IVF's nprobe)."""
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        return "ef_search"
    if isinstance(inner, faiss.IndexRefine):
        return "k_factor"
    return None


def _typed(name: str, value):
    return int(value) if name == "ef_search" else float(value)


def _apply_setting(index: faiss.Index, name: str, value) -> None:
    inner = _inner(index)
    if name == "ef_search":
        inner.hnsw.efSearch = _typed(name, value)
    else:
        inner.k_factor = _typed(name, value)


def tune_search_setting(index: faiss.Index, vectors: np.ndarray, k: int = 10, n_queries: int = 200,
                        target: float = TUNE_RECALL_TARGET, seed: int = 0,
                        queries: np.ndarray | None = None) -> tuple[float, float]:
    """Smallest value of the index's `search_setting` whose recall@k reaches `target`, on `queries` (vectors
    of real queries, all of them) or else on `n_queries` noisy copies of stored vectors.

    Real queries are the better judge: they lie farther from their nearest products than noisy copies do,
    where a graph search needs a wider beam (on 200,000 fashion products the copies' efSearch gave real
    queries recall@10 0.945, not 0.95). Returns (value, measured recall); the largest candidate if none
    reaches the target.
    """
    name = search_setting(index)
    candidates = EF_SEARCH_CANDIDATES if name == "ef_search" else K_FACTOR_CANDIDATES
    if queries is not None and len(queries):
        q = np.asarray(queries, dtype=np.float32)
    else:
        rng = np.random.default_rng(seed)
        q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
        q = q + rng.normal(scale=0.5 / np.sqrt(vectors.shape[1]), size=q.shape).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    truth = exact_top_k(vectors, q, k)
    recall = 0.0
    for value in candidates:
        _apply_setting(index, name, value)
        _, found = index.search(q, k)  # labels == row positions at build time
        recall = recall_at_k(found, truth)
        if recall >= target:
            return value, recall
    return candidates[-1], recall


class FaissIndex(VectorIndex):
    backend = "faiss"

    def __init__(self, path, meta: dict, table: pd.DataFrame, index: faiss.Index, labels: np.ndarray):
        super().__init__(path, meta, table)
        self._index = index
        self._labels = np.asarray(labels, dtype=np.int64)      # label of each table row
        self._id_of_label = dict(zip(self._labels.tolist(), table["id"].tolist()))
        self._selector_ok: bool | None = None                  # does this index type take a selector?
        self._apply_search_settings()

    # -- build / open / save
    @classmethod
    def build(cls, vectors: np.ndarray, table: pd.DataFrame, out_dir, meta: dict,
              factory: str | None = None, progress: bool = False,
              ef_construction: int | None = None, ef_search: int | None = None,
              k_factor: float | None = None, tune_queries=None) -> "FaissIndex":
        """`tune_queries`: query vectors to tune the search setting on (`tune_search_setting`), or a callable
        that makes them, called only when this index has a setting to tune."""
        n, d = vectors.shape
        factory = factory or default_factory(n)
        if "IDMap" in factory:
            raise ValueError(f"factory {factory!r}: leave out IDMap, the index maps product ids itself")
        try:
            made = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"factory {factory!r} is not a valid FAISS index factory string "
                             f"({str(e).strip().splitlines()[-1]})") from None
        inner = faiss.downcast_index(made)  # a typed view of `made`, which must stay referenced
        if hasattr(inner, "hnsw"):
            inner.hnsw.efConstruction = ef_construction or HNSW_EF_CONSTRUCTION
        if not inner.is_trained:
            sample = vectors if n <= 200_000 else vectors[np.random.default_rng(0).choice(n, 200_000, False)]
            inner.train(sample)
        index = faiss.IndexIDMap2(made)
        labels = np.arange(n, dtype=np.int64)
        _add_in_chunks(index, vectors, labels, progress, "indexing")
        meta = dict(meta, factory=factory, next_label=n)
        if hasattr(inner, "hnsw"):
            meta["ef_construction"] = int(inner.hnsw.efConstruction)
        setting = search_setting(index)
        if setting:
            value = {"ef_search": ef_search, "k_factor": k_factor}[setting]
            if value is None:
                if callable(tune_queries):
                    tune_queries = tune_queries()
                value, recall = tune_search_setting(index, vectors, queries=tune_queries)
                meta[f"{setting}_tuned_recall_at_10"] = round(recall, 4)
                meta[f"{setting}_tuned_on"] = (f"{len(tune_queries)} queries" if tune_queries is not None
                                               and len(tune_queries) else "noisy copies of stored vectors")
            meta[setting] = _typed(setting, value)
        self = cls(out_dir, meta, table, index, labels)
        self.save()
        return self

    @classmethod
    def open(cls, path: Path, meta: dict, data_dir: Path) -> "FaissIndex":
        index_path = data_dir / INDEX_FILE
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: missing; the index at {path} is incomplete, {REBUILD_HINT}")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise ValueError(f"{index_path}: corrupt ({str(e).strip().splitlines()[-1]}); {REBUILD_HINT}") from None
        if not isinstance(index, faiss.IndexIDMap2) or index.d != int(meta["dim"]):
            raise ValueError(f"{index_path}: not a {meta['dim']}-d dashclip FAISS index; {REBUILD_HINT}")
        table, extra = read_table(data_dir, meta.get("id_type", "str"))
        if "label" not in extra.columns:
            raise ValueError(f"{data_dir / IDS_FILE}: no `label` column; {REBUILD_HINT}")
        if index.ntotal < len(table):
            raise ValueError(f"{index_path}: holds {index.ntotal} vectors but ids.parquet lists "
                             f"{len(table)} products; {REBUILD_HINT}")
        labels = _check_labels(extra["label"], index, meta, data_dir / IDS_FILE)
        return cls(path, meta, table, index, labels)

    def _write_data(self, directory: Path) -> dict:
        """index.faiss into a new data subdir (the base saves ids, attributes and meta.json)."""
        faiss.write_index(self._index, str(directory / INDEX_FILE))
        return {"label": self._labels}

    @property
    def index_bytes(self) -> int:
        """Size of the serialised FAISS index."""
        return int(faiss.serialize_index(self._index).nbytes)

    def set_search_setting(self, value) -> None:
        """Set the index's speed/recall setting (`search_setting`: efSearch or k_factor) for later searches."""
        name = search_setting(self._index)
        if name is None:
            raise ValueError(f"a {self.meta.get('factory')} index has no efSearch or k_factor to set")
        self.meta[name] = _typed(name, value)
        self._apply_search_settings()

    def _apply_search_settings(self) -> None:
        name = search_setting(self._index)
        if name and self.meta.get(name):
            _apply_setting(self._index, name, self.meta[name])

    # -- search
    def _search(self, q, k, filters, mask):
        n_tombstones = self._index.ntotal - len(self)
        if mask is None and n_tombstones == 0:
            scores, labels = self._index.search(q, k)
        else:
            allowed = self._labels if mask is None else self._labels[mask]
            bitmap = np.zeros(int(self.meta["next_label"]), dtype=bool)
            bitmap[allowed] = True
            scores, labels = None, None
            if self._selector_ok is not False:
                try:
                    scores, labels = self._search_selected(q, k, bitmap)
                    self._selector_ok = True
                except RuntimeError:  # this index type takes no selector
                    self._selector_ok = False
            if scores is None:
                scores, labels = self._search_post_filtered(q, k, bitmap)
        return self._results(scores, labels)

    def _search_selected(self, q, k, bitmap):
        packed = np.packbits(bitmap, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(packed))
        inner = _inner(self._index)
        if hasattr(inner, "hnsw"):
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(inner.hnsw.efSearch)
        elif hasattr(inner, "nprobe"):
            params = faiss.SearchParametersIVF()
            params.nprobe = int(inner.nprobe)
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        scores, labels = self._index.search(q, k, params=params)
        del packed, selector  # kept alive until here: FAISS holds raw pointers
        return scores, labels

    def _search_post_filtered(self, q, k, bitmap):
        """Over-fetch until each query has k allowed hits (or everything was fetched), then keep those."""
        ntotal = self._index.ntotal
        fetch = min(ntotal, max(4 * k, 64))
        while True:
            scores, labels = self._index.search(q, fetch)
            ok = (labels >= 0) & bitmap[np.clip(labels, 0, len(bitmap) - 1)]
            if ok.sum(axis=1).min() >= k or fetch >= ntotal:
                break
            fetch = min(ntotal, fetch * 4)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_l = np.full((len(q), k), -1, dtype=np.int64)
        for r in range(len(q)):
            hits = np.flatnonzero(ok[r])[:k]
            out_s[r, :len(hits)], out_l[r, :len(hits)] = scores[r, hits], labels[r, hits]
        return out_s, out_l

    def _results(self, scores, labels):
        ids = [[self._id_of_label[l] for l in row if l >= 0] for row in labels.tolist()]
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        return ids, scores

    def _vectors(self, ids, rows):
        try:
            return self._index.reconstruct_batch(self._labels[rows])
        except RuntimeError:    # e.g. an IVF index without a direct map cannot reconstruct
            return None

    # -- changes
    def _add(self, ids, vectors, attributes):
        start = int(self.meta["next_label"])
        labels = np.arange(start, start + len(ids), dtype=np.int64)
        _add_in_chunks(self._index, vectors, labels, False, "adding")
        self._labels = np.concatenate([self._labels, labels])
        self._id_of_label.update(zip(labels.tolist(), ids))
        self.meta["next_label"] = start + len(ids)

    def _remove(self, ids, rows):
        labels = self._labels[rows]
        try:
            self._index.remove_ids(faiss.IDSelectorBatch(len(labels), faiss.swig_ptr(labels)))
        except RuntimeError:
            pass  # e.g. HNSW cannot delete: the label stays as a tombstone that searches exclude
        for label in labels.tolist():
            self._id_of_label.pop(label, None)

    def _after_remove(self, keep):
        self._labels = self._labels[keep]


def _check_labels(column: pd.Series, index: faiss.Index, meta: dict, where: Path) -> np.ndarray:
    """The label map (product row -> FAISS label) must be whole: unique ints below meta's next_label, each one
    a vector in the index. A damaged one is an error here, naming the file, not an IndexError in a search."""
    try:
        labels = np.asarray(column, dtype=np.int64)
        next_label = int(meta.get("next_label", -1))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: `label` is not whole numbers; {REBUILD_HINT}") from None
    stored = faiss.vector_to_array(index.id_map)
    bad = None
    if len(labels) and (labels.min() < 0 or labels.max() >= next_label):
        bad = f"labels must be in [0, next_label={next_label})"
    elif len(np.unique(labels)) != len(labels):
        bad = "a label repeats"
    elif not np.isin(labels, stored).all():
        bad = "a label has no vector in index.faiss"
    elif len(stored) and stored.max() >= next_label:
        bad = f"index.faiss holds a label >= next_label={next_label}"
    if bad:
        raise ValueError(f"{where}: the label map is corrupt ({bad}); {REBUILD_HINT}")
    return labels


def _add_in_chunks(index: faiss.Index, vectors: np.ndarray, labels: np.ndarray, progress: bool,
                   what: str) -> None:
    from ..clihelp import progress as progress_bar

    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(what, total=len(vectors))
        for start in range(0, len(vectors), ADD_CHUNK):
            stop = start + ADD_CHUNK
            index.add_with_ids(vectors[start:stop], labels[start:stop])
            bar.advance(task, len(vectors[start:stop]))
