"""The vector index interface shared by every backend (`build_index`, `open_index`, `updating`: backends.py).

An index dir holds:

    meta.json            kind "index", model_id, model hash, catalog_hash (from the caller) + dim, metric, n,
                         backend, factory, built_at, id_type, attributes, backend settings (ef_search,
                         k_factor, uri, ...) and `data`: the name of the subdir that holds the files below.
                         meta.json is the commit point: every save writes a new data subdir, then replaces
                         meta.json in one `os.replace`, so a reader sees the old or the new index, whole.
    data.<stamp>/        index.faiss (FAISS backend; the Milvus backend keeps vectors in a collection named in
                         meta.json instead), ids.parquet (product id of every vector: `id`, and the FAISS
                         label `label`), attributes.parquet (`id` + one string column per attribute)
    .lock                the writers' lock (`dashclip.io.dir_lock`): add/remove/build serialize on it

The previous data subdir is kept until the next save (a reader that read the old meta.json can still open
it); older ones and those of a killed writer are deleted by the next save. A dir written before format 2
(no `data` in meta.json: the files next to meta.json) still opens, and its next save moves it to this layout.

Vectors are L2-normalised float32 and scored by inner product (= cosine), best first.
Product ids are the catalog's ids: all ints or all strings, never mixed.
"""
from __future__ import annotations

import abc
import datetime as dt
import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.catalog import is_missing as _missing
from ..io import dir_lock, write_json

META_FILE = "meta.json"
IDS_FILE = "ids.parquet"
ATTRIBUTES_FILE = "attributes.parquet"
PATH_KEYS = ("catalog_dir", "embeddings_dir", "model_dir")  # stored relative to the index dir (see meta_path)
FORMAT_VERSION = 2            # 2: data files in a `data.<stamp>` subdir named by meta.json; 1: flat
KIND = "index"                # meta.json's `kind`: what `dashclip.io.prepare_output_dir` recognises
DATA_PREFIX = "data."
FLAT_FILES = ("index.faiss", IDS_FILE, ATTRIBUTES_FILE)   # where a format-1 dir keeps its data
METRIC = "inner_product"
BACKENDS = ("faiss", "milvus")
REBUILD_HINT = "rebuild it with `dashclip index build`"


# ----------------------------------------------------------------------------- ids and attributes

def normalise_ids(ids: Sequence, what: str = "ids") -> tuple[list, str]:
    """Return (ids as plain Python ints or strs, "int" | "str"). Mixed kinds and duplicates are errors."""
    out = list(ids.tolist() if isinstance(ids, (np.ndarray, pd.Series, pd.Index)) else ids)
    if not out:
        return out, "int"
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in out):
        out, kind = [int(i) for i in out], "int"
    elif all(isinstance(i, str) for i in out):
        kind = "str"
    else:
        for row, i in enumerate(out):
            if isinstance(i, bool) or not isinstance(i, (str, int, np.integer)):
                raise ValueError(f"{what}: row {row}: product ids must be ints or strings, "
                                 f"got {type(i).__name__} {i!r}")
        raise ValueError(f"{what}: product ids must be all ints or all strings, not a mix")
    seen: set = set()
    for i in out:
        if i in seen:
            raise ValueError(f"{what}: duplicate product id {i!r}")
        seen.add(i)
    return out, kind


def attribute_frame(ids: list, attributes: pd.DataFrame | None, what: str = "attributes") -> pd.DataFrame:
    """One row per id (in `ids` order): `id` + attribute columns as strings (None where missing).

    `attributes` either has an `id` column (rows are matched by id) or is aligned with `ids` by position.
    """
    if attributes is None:
        return pd.DataFrame({"id": pd.Series(ids, dtype=object)})
    attributes = attributes.reset_index(drop=True)
    if "id" in attributes.columns:
        by_id = attributes.copy()
        by_id["id"] = normalise_ids(by_id["id"], what)[0]
        by_id = by_id.set_index("id")
        missing = [i for i in ids if i not in by_id.index]
        if missing:
            raise ValueError(f"{what}: no row for product id(s) {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        attributes = by_id.loc[ids].reset_index(drop=True)
    elif len(attributes) != len(ids):
        raise ValueError(f"{what}: {len(attributes)} rows for {len(ids)} ids (give one row per id, "
                         f"or an `id` column)")
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=object)})
    for col in attributes.columns:
        values = attributes[col]
        frame[str(col)] = pd.Series([None if _missing(v) else str(v) for v in values], dtype=object)
    return frame


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def as_queries(queries: Any, dim: int) -> np.ndarray:
    """Queries as a C-contiguous float32 [Q, dim] array (a single [dim] vector is one query)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape [Q, {dim}], got {list(np.shape(queries))}")
    if not np.isfinite(q).all():
        raise ValueError(f"queries: row {int(np.where(~np.isfinite(q).all(axis=1))[0][0])} has NaN or "
                         f"infinite values")
    return np.ascontiguousarray(q)


def as_vectors(vectors: Any, n: int, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != n or (dim is not None and v.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'D'}]"
        raise ValueError(f"{what}: expected shape {want}, got {list(v.shape)}")
    if not np.isfinite(v).all():
        row = int(np.where(~np.isfinite(v).all(axis=1))[0][0])
        raise ValueError(f"{what}: row {row} has NaN or infinite values")
    return np.ascontiguousarray(v)


# ----------------------------------------------------------------------------- the interface

class VectorIndex(abc.ABC):
    """Nearest products by inner product, with attribute filters.

    The shared part keeps the table of live products (`id` + attributes) in memory, and saves (lock, data
    subdir, atomic switch of meta.json, clean-up); a backend stores the vectors and implements `_search`,
    `_add`, `_remove` and `_write_data` (its own files in a new data subdir), and `_vectors` where it can
    read them back.
    """

    backend: str = ""

    def __init__(self, path: str | Path, meta: dict, table: pd.DataFrame):
        self.path = Path(path)                  # the index dir (meta.json); data files are in data_dir
        self.meta = meta
        self._table = table  # one row per live product: `id` + attribute columns
        self._row_of = {pid: i for i, pid in enumerate(table["id"].tolist())}

    # -- reading
    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={len(self)}, dim={self.dim})"

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def model_id(self) -> str | None:
        return self.meta.get("model_id")

    @property
    def fields(self) -> list[str]:
        """Attribute fields that filters can use."""
        return [c for c in self._table.columns if c != "id"]

    @property
    def ids(self) -> list:
        return self._table["id"].tolist()

    def key(self, pid: Any) -> Any:
        """A product id in this index's id type: "15970" finds 15970 in an int-id index (URLs are strings);
        one that cannot be of that type is returned as given (it finds nothing)."""
        from ..data.ids import coerce_id, plain_id

        try:
            return coerce_id(pid, self.meta.get("id_type") == "int")
        except KeyError:
            return plain_id(pid)

    def has(self, pid: Any) -> bool:
        return self.key(pid) in self._row_of

    def attribute_values(self, field: str) -> list[str]:
        """Distinct values of an attribute among live products, sorted (for filter chips)."""
        self._check_field(field)
        return sorted(self._table[field].dropna().unique().tolist())

    def attributes_of(self, pid: Any) -> dict:
        row = self._row_of.get(self.key(pid))
        if row is None:
            raise KeyError(f"product id {pid!r} is not in the index at {self.path}")
        return {k: v for k, v in self._table.iloc[row].items() if k != "id"}

    # -- searching
    def search(self, queries: np.ndarray, k: int,
               filters: dict[str, list[str]] | None = None) -> tuple[list[list], np.ndarray]:
        """Top-k products per query, best first: (ids per query, scores [Q, k']).

        k' = min(k, number of products passing the filters). Filters AND across fields and OR within
        a field's values. An approximate index may find fewer than k' for a query: its id list is shorter
        and the rest of its score row is -inf.
        """
        q = as_queries(queries, self.dim)
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        filters = self._check_filters(filters)
        mask = self._filter_mask(filters) if filters else None
        n_allowed = len(self) if mask is None else int(mask.sum())
        k = min(int(k), n_allowed)
        if k == 0 or len(q) == 0:
            return [[] for _ in range(len(q))], np.zeros((len(q), 0), dtype=np.float32)
        return self._search(q, k, filters, mask)

    def vectors(self, ids: Sequence) -> np.ndarray | None:
        """The stored vectors of products `ids`, in that order (float32 [n, dim]; a compressed index gives its
        approximations), or None when this backend cannot read its vectors back (then a caller does
        without them). An id not in the index is a KeyError."""
        keys = [self.key(p) for p in ids]
        missing = [p for p in keys if p not in self._row_of]
        if missing:
            raise KeyError(f"product id {missing[0]!r} is not in the index at {self.path}")
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._vectors(keys, np.array([self._row_of[p] for p in keys], dtype=np.int64))
        return None if out is None else np.asarray(out, dtype=np.float32).reshape(len(keys), self.dim)

    def _check_field(self, field: str) -> None:
        if field not in self.fields:
            known = ", ".join(self.fields) or "none"
            raise ValueError(f"unknown filter field {field!r}; this index has: {known}")

    def _check_filters(self, filters: dict | None) -> dict[str, list[str]]:
        if not filters:
            return {}
        out = {}
        for field, values in filters.items():
            self._check_field(field)
            if isinstance(values, (str, int, float)):
                values = [values]
            values = [str(v) for v in values]
            if not values:
                raise ValueError(f"filter {field!r} has no values")
            out[field] = values
        return out

    def _filter_mask(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Boolean mask over the live-product table: AND across fields, OR within one field."""
        mask = np.ones(len(self._table), dtype=bool)
        for field, values in filters.items():
            mask &= self._table[field].isin(values).to_numpy()
        return mask

    # -- changing
    def add(self, ids: Sequence, vectors: np.ndarray, attributes: pd.DataFrame | None = None) -> None:
        """Add products (searchable at once; call `save()` to persist). A duplicate id is an error."""
        ids, kind = normalise_ids(ids, "add")
        if not ids:
            return
        if kind != self.meta.get("id_type", kind):
            raise ValueError(f"add: this index has {self.meta.get('id_type')} product ids, got {kind} ids")
        dup = [i for i in ids if i in self._row_of]
        if dup:
            raise ValueError(f"add: product id {dup[0]!r} is already in the index at {self.path}"
                             f"{f' (and {len(dup) - 1} more)' if len(dup) > 1 else ''}")
        vectors = as_vectors(vectors, len(ids), self.dim, "add: vectors")
        new = attribute_frame(ids, attributes, "add: attributes")
        for col in self.fields:
            if col not in new.columns:
                new[col] = pd.Series([None] * len(new), dtype=object)
        self._add(ids, vectors, new)
        self._table = pd.concat([self._table, new], ignore_index=True)
        for col in self._table.columns:
            self._table[col] = self._table[col].astype(object).where(self._table[col].notna(), None)
        self._row_of = {pid: i for i, pid in enumerate(self._table["id"].tolist())}
        self.meta["id_type"] = kind
        self.meta["n"] = len(self)
        self.meta["attributes"] = self.fields

    def remove(self, ids: Sequence) -> None:
        """Remove products (call `save()` to persist). An unknown id is an error; nothing is removed then."""
        ids = [self.key(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
        unknown = [i for i in ids if i not in self._row_of]
        if unknown:
            raise ValueError(f"remove: product id {unknown[0]!r} is not in the index at {self.path}"
                             f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}")
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        rows = np.array([self._row_of[i] for i in ids], dtype=np.int64)
        self._remove(ids, rows)
        keep = np.ones(len(self._table), dtype=bool)
        keep[rows] = False
        self._table = self._table[keep]
        self._after_remove(keep)
        self._table = self._table.reset_index(drop=True)
        self._row_of = {pid: i for i, pid in enumerate(self._table["id"].tolist())}
        self.meta["n"] = len(self)

    def _after_remove(self, keep: np.ndarray) -> None:
        """Hook for backends that keep arrays aligned with the table."""

    def _vectors(self, ids: list, rows: np.ndarray) -> np.ndarray | None:
        """Hook for backends that can read vectors back (`vectors`): those of live products `ids` (table
        `rows`), or None."""
        return None

    # -- backend
    @abc.abstractmethod
    def _search(self, q: np.ndarray, k: int, filters: dict[str, list[str]],
                mask: np.ndarray | None) -> tuple[list[list], np.ndarray]:
        ...

    @abc.abstractmethod
    def _add(self, ids: list, vectors: np.ndarray, attributes: pd.DataFrame) -> None:
        ...

    @abc.abstractmethod
    def _remove(self, ids: list, rows: np.ndarray) -> None:
        ...

    def _write_data(self, directory: Path) -> dict:
        """Write the backend's own files into a new data subdir; return extra ids.parquet columns."""
        return {}

    def save(self) -> None:
        """Persist the index atomically: readers see the old index or the new one, never a mix or none.

        Under the dir's write lock: write a new data subdir, switch meta.json to it (one os.replace), then
        delete data subdirs older than the previous one (and any a killed writer left)."""
        with dir_lock(self.path, "index"):
            previous = _data_name(_read_meta_quiet(self.path))
            name = f"{DATA_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:8]}"
            directory = self.path / name
            directory.mkdir()
            meta = dict(self.meta, kind=KIND, format_version=FORMAT_VERSION, n=len(self), data=name)
            try:
                extra = self._write_data(directory)
                write_table(directory, self._table, extra)
                _fsync_dir(directory)
                _switch(self.path, meta)
            except BaseException:
                _discard(directory)
                raise
            self.meta = meta
            clean_index_dir(self.path, keep=(name, previous))


# ----------------------------------------------------------------------------- the index dir

def is_index_dir(path: str | Path) -> bool:
    """Whether `path` holds a dashclip index (its meta.json says so; format 1 had no `kind`: dim + backend)."""
    meta = _read_meta_quiet(Path(path))
    return bool(meta) and (meta.get("kind") == KIND or ("kind" not in meta and "dim" in meta and "backend" in meta))


def stored_path(value: str | Path, index_dir: Path) -> str:
    """How meta.json records an input dir: relative to the index dir (both can move together, and any
    working dir works); absolute where no relative path exists (another drive)."""
    import os

    absolute = Path(value).resolve()
    try:
        return os.path.relpath(absolute, index_dir.resolve())
    except ValueError:
        return str(absolute)


def meta_path(meta: dict, key: str, index_dir: str | Path) -> Path | None:
    """An input dir recorded in meta.json (`catalog_dir`, ...), resolved against the index dir.

    Indexes built before paths were stored relative to the index dir recorded them relative to the working
    dir of the build: such a path is used as is when it exists from here and nothing exists next to the index."""
    value = meta.get(key)
    if not value:
        return None
    path = Path(value)
    if path.is_absolute():
        return path
    beside = Path(index_dir) / path
    if not beside.exists() and path.exists():
        return path
    return Path(_normpath(beside))


def _normpath(path: Path) -> str:
    import os

    return os.path.normpath(str(path))


def _read_meta_quiet(path: Path) -> dict | None:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _data_name(meta: dict | None) -> str | None:
    return meta.get("data") if meta else None


def _fsync_dir(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _switch(path: Path, meta: dict) -> None:
    """The commit point of a save: meta.json, naming the new data subdir, replaces the old one at once."""
    write_json(path / META_FILE, meta)


def _discard(directory: Path) -> None:
    """Delete the data subdir of a failed save (a killed one is cleaned by the next save)."""
    shutil.rmtree(directory, ignore_errors=True)


def clean_index_dir(path: Path, keep: Sequence[str | None]) -> list[str]:
    """Delete data subdirs other than `keep` (left by older saves or by a killed writer), and the flat files
    of a format-1 dir once no kept version uses them. Only names this module writes are touched."""
    keep = {k for k in keep if k}
    removed = []
    for entry in path.iterdir():
        if entry.name.startswith(DATA_PREFIX) and entry.is_dir() and not entry.is_symlink() \
                and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if all(k.startswith(DATA_PREFIX) for k in keep) and len(keep) >= 2:  # the previous save was format 2 too
        for name in FLAT_FILES:
            if (path / name).is_file():
                (path / name).unlink()
                removed.append(name)
    return removed


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no index here (not a directory); build one with "
                                f"`dashclip index build`")
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing, so {path} is not a dashclip index; "
                                f"build one with `dashclip index build`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: corrupt ({e}); {REBUILD_HINT}") from None
    if not isinstance(meta, dict) or "dim" not in meta or "backend" not in meta:
        raise ValueError(f"{meta_path}: not index metadata (no dim/backend); {REBUILD_HINT}")
    data = meta.get("data")
    if data is not None and (not isinstance(data, str) or not re.fullmatch(r"data\.[A-Za-z0-9_.-]+", data)
                             or data in (".", "..")):
        raise ValueError(f"{meta_path}: bad data dir name {data!r}; {REBUILD_HINT}")
    return meta


def data_dir(path: str | Path, meta: dict) -> Path:
    """Where the index's files are: the data subdir meta.json names, or the dir itself (format 1)."""
    return Path(path) / meta["data"] if meta.get("data") else Path(path)


def read_table(path: Path, id_type: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ids.parquet + attributes.parquet -> (live-product table, ids.parquet's extra per-row columns).

    Errors name the bad file."""
    ids_path, attrs_path = path / IDS_FILE, path / ATTRIBUTES_FILE
    frames = []
    for p in (ids_path, attrs_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; the index at {path} is incomplete, {REBUILD_HINT}")
        try:
            frames.append(pd.read_parquet(p))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{p}: corrupt ({type(e).__name__}: {e}); {REBUILD_HINT}") from None
    ids, attrs = frames
    if "id" not in ids.columns or "id" not in attrs.columns or len(ids) != len(attrs) \
            or not (ids["id"].to_numpy() == attrs["id"].to_numpy()).all():
        raise ValueError(f"{attrs_path}: does not match {ids_path} row for row; {REBUILD_HINT}")
    table = attrs.astype(object)
    table = table.where(table.notna(), None)
    if id_type == "int":
        table["id"] = [int(i) for i in table["id"]]
    return table, ids.drop(columns=["id"])


def write_table(directory: Path, table: pd.DataFrame, extra_id_columns: dict | None = None) -> None:
    """Write ids.parquet (+ extra per-row columns such as FAISS labels) and attributes.parquet."""
    ids = pd.DataFrame({"id": table["id"].tolist(), **(extra_id_columns or {})})
    ids.to_parquet(directory / IDS_FILE, index=False)
    attrs = table.copy()
    for col in attrs.columns:
        if col != "id":
            attrs[col] = attrs[col].astype(object)
    attrs["id"] = table["id"].tolist()
    attrs.to_parquet(directory / ATTRIBUTES_FILE, index=False)
