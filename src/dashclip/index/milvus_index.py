"""The distributed backend: vectors and attributes in a Milvus collection (pymilvus `MilvusClient`).

`uri` is a Milvus Lite file (default `<index dir>/milvus.db`: an embedded Milvus, for tests and laptops) or a
cluster URI such as `http://host:19530` (token from $MILVUS_TOKEN, never stored). The index dir keeps
`meta.json` (uri, collection, field names) and, as a snapshot written at build/save, `ids.parquet` and
`attributes.parquet`; the collection itself is the source of truth, read back when the index opens.

Atomic builds: every build writes a new collection; only when it is complete does `meta.json` (the
commit point) name it. A crash mid-build leaves the old `meta.json` pointing at the old, complete
collection. The replaced collection is kept until the next build, so a server still searching it keeps
answering until it reopens the index; older ones (and those left by crashed builds) are dropped. `add`/`remove` write to Milvus at once (each
insert/delete is atomic in Milvus); `save()` (the base's) then writes the snapshot and switches meta.json.
A Lite database stays in the index dir itself (`milvus.db`), shared by every data subdir.

Attribute filters are pushed down as a Milvus boolean expression; every value is a quoted, escaped
string literal, and field names come from the index's own schema, never from the request.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from .base import META_FILE, REBUILD_HINT, VectorIndex, attribute_frame

LITE_FILE = "milvus.db"
PK, VECTOR = "pk", "vector"
EXACT_MAX = 200_000
HNSW_PARAMS = {"M": 32, "efConstruction": 200}
HNSW_EF = 128
MAX_TOPK = 16_384        # Milvus returns at most this many hits per query
MAX_VARCHAR = 65_535
INSERT_CHUNK = 5_000

_clients: dict = {}      # one client per uri: Milvus Lite starts one server per database file


def is_lite(uri: str) -> bool:
    return not re.match(r"^[a-z]+://", uri)


def resolve_uri(uri: str, index_dir: Path) -> str:
    """A Lite path relative to the index dir (as meta.json stores it) -> absolute; a URL as is."""
    if not is_lite(uri):
        return uri
    path = Path(uri)
    return str((path if path.is_absolute() else index_dir / path).resolve())


def client_for(uri: str):
    """A MilvusClient for `uri` (cached). A cluster's token comes from $MILVUS_TOKEN."""
    from pymilvus import MilvusClient

    if uri not in _clients:
        if is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            _clients[uri] = MilvusClient(uri)
        else:
            _clients[uri] = MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))
    return _clients[uri]


def literal(value: str) -> str:
    """A Milvus string literal for any value: double-quoted with \\, " and control characters escaped."""
    return json.dumps(str(value), ensure_ascii=False)


def filter_expression(filters: dict[str, list[str]], field_names: dict[str, str]) -> str:
    """AND across fields, OR within a field: `a0 in ["Women", "Unisex"] and a2 in ["Red"]`."""
    return " and ".join(f"{field_names[f]} in [{', '.join(literal(v) for v in values)}]"
                        for f, values in filters.items())


@contextlib.contextmanager
def _quiet_pymilvus():
    """pymilvus logs a harmless warning per query iterator against Milvus Lite."""
    logger = logging.getLogger("pymilvus")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class MilvusIndex(VectorIndex):
    backend = "milvus"

    def __init__(self, path, meta: dict, table: pd.DataFrame, client):
        super().__init__(path, meta, table)
        self._client = client
        self._collection = meta["collection"]
        self._field_names = dict(meta["milvus_fields"])  # attribute -> Milvus field

    # -- build / open / save
    @classmethod
    def build(cls, vectors: np.ndarray, table: pd.DataFrame, out_dir, meta: dict,
              factory: str | None = None, uri: str | None = None, progress: bool = False) -> "MilvusIndex":
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stored_uri = _stored_uri(uri, out_dir)
        real_uri = resolve_uri(stored_uri, out_dir)
        client = client_for(real_uri)
        n, dim = vectors.shape
        index_type = (factory or ("FLAT" if n < EXACT_MAX else "HNSW")).upper()
        attrs = [c for c in table.columns if c != "id"]
        field_names = {a: f"a{i}" for i, a in enumerate(attrs)}  # catalog names may not be valid Milvus names
        prefix = "dashclip_" + hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12]
        collection = f"{prefix}_{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"
        meta = dict(meta, uri=stored_uri, collection=collection, factory=index_type,
                    milvus_fields=field_names)
        if index_type == "HNSW":
            meta.update(hnsw=HNSW_PARAMS, ef_search=HNSW_EF)
        old = _read_old_meta(out_dir)

        _create_collection(client, collection, meta["id_type"], dim, list(field_names.values()),
                           index_type)
        self = cls(out_dir, meta, table.iloc[:0].copy(), client)
        try:
            self._insert(table["id"].tolist(), vectors, table, progress)
        except BaseException:
            client.drop_collection(collection)
            raise
        self._table = table.reset_index(drop=True)
        self._row_of = {pid: i for i, pid in enumerate(self._table["id"].tolist())}
        try:
            self.save()  # meta.json names the new collection: the commit point
        except BaseException:
            client.drop_collection(collection)
            raise
        self._drop_replaced(old, real_uri, prefix, out_dir)
        return self

    @classmethod
    def open(cls, path: Path, meta: dict, data_dir: Path | None = None) -> "MilvusIndex":
        for key in ("uri", "collection", "milvus_fields"):
            if key not in meta:
                raise ValueError(f"{path / META_FILE}: no {key!r} for the Milvus backend; {REBUILD_HINT}")
        uri = resolve_uri(meta["uri"], path)
        if is_lite(uri) and not Path(uri).exists():
            raise FileNotFoundError(f"{uri}: the Milvus Lite database of the index at {path} is missing; "
                                    f"{REBUILD_HINT}")
        client = client_for(uri)
        collection = meta["collection"]
        if not client.has_collection(collection):
            raise ValueError(f"{path / META_FILE}: collection {collection!r} is not in Milvus at "
                             f"{meta['uri']}; {REBUILD_HINT}")
        client.load_collection(collection)
        table = _read_collection(client, collection, meta)
        return cls(path, meta, table, client)

    def _drop_replaced(self, old: dict | None, uri: str, prefix: str, out_dir: Path) -> None:
        """Drop this index dir's earlier collections except the one just replaced (see the module doc)."""
        keep = {self._collection}
        if old and old.get("backend") == "milvus" and resolve_uri(old.get("uri", ""), out_dir) == uri:
            keep.add(old.get("collection"))
        for name in self._client.list_collections():
            if name.startswith(prefix + "_") and name not in keep:
                self._client.drop_collection(name)

    # -- search
    def _search(self, q, k, filters, mask):
        if k > MAX_TOPK:
            raise ValueError(f"k={k}: Milvus returns at most {MAX_TOPK} results per query")
        params = {"metric_type": "IP"}
        if self.meta.get("ef_search"):
            params["params"] = {"ef": max(int(self.meta["ef_search"]), k)}
        hits = self._client.search(self._collection, data=list(q), limit=k, search_params=params,
                                   filter=filter_expression(filters, self._field_names) if filters else "",
                                   anns_field=VECTOR, output_fields=[PK])  # not the vectors
        ids = [[h[PK] for h in row] for row in hits]
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for r, row in enumerate(hits):
            scores[r, :len(row)] = [h["distance"] for h in row]
        return ids, scores

    def _vectors(self, ids, rows):
        got = {h[PK]: h[VECTOR] for h in self._client.get(self._collection, ids=list(ids), output_fields=[VECTOR])}
        return np.stack([np.asarray(got[p], dtype=np.float32) for p in ids])

    # -- changes
    def _insert(self, ids: list, vectors: np.ndarray, attributes: pd.DataFrame, progress: bool) -> None:
        from ..clihelp import progress as progress_bar

        attrs = attributes.reset_index(drop=True)
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task("inserting into Milvus", total=len(ids))
            for start in range(0, len(ids), INSERT_CHUNK):
                rows = []
                for i in range(start, min(start + INSERT_CHUNK, len(ids))):
                    row = {PK: ids[i], VECTOR: vectors[i]}
                    for attr, name in self._field_names.items():
                        row[name] = attrs.at[i, attr] if attr in attrs.columns else None
                    rows.append(row)
                self._client.insert(self._collection, rows)
                bar.advance(task, len(rows))

    def _add(self, ids, vectors, attributes):
        unknown = [c for c in attributes.columns if c != "id" and c not in self._field_names]
        if unknown:
            raise ValueError(f"add: attribute {unknown[0]!r} is not in this Milvus index's schema "
                             f"(known: {', '.join(self._field_names) or 'none'}); {REBUILD_HINT} to add a field")
        self._insert(ids, vectors, attributes, progress=False)

    def _remove(self, ids, rows):
        self._client.delete(self._collection, ids=list(ids))


def _stored_uri(uri: str | None, out_dir: Path) -> str:
    """What meta.json keeps: a Lite file inside the index dir relative to it (the dir can move), other
    Lite paths absolute (given relative to the working dir), a URL as is."""
    if uri is None:
        return LITE_FILE
    if not is_lite(uri):
        return uri
    path = Path(uri).resolve()
    try:
        return str(path.relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


def _read_old_meta(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _create_collection(client, name: str, id_type: str, dim: int, fields: list[str], index_type: str) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    if id_type == "int":
        schema.add_field(PK, DataType.INT64, is_primary=True)
    else:
        schema.add_field(PK, DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    for field in fields:
        schema.add_field(field, DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
    index_params = client.prepare_index_params()
    index_params.add_index(field_name=VECTOR, index_type=index_type, metric_type="IP",
                           params=HNSW_PARAMS if index_type == "HNSW" else {})
    client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")


def _read_collection(client, collection: str, meta: dict) -> pd.DataFrame:
    """Every live product's id and attributes, read back from the collection."""
    fields = dict(meta["milvus_fields"])
    rows = []
    with _quiet_pymilvus():
        it = client.query_iterator(collection, batch_size=10_000, filter="",
                                   output_fields=[PK, *fields.values()])
        try:
            while batch := it.next():
                rows.extend(batch)
        finally:
            it.close()
    ids = [r[PK] for r in rows]
    attributes = pd.DataFrame({attr: [r.get(name) for r in rows] for attr, name in fields.items()},
                              index=range(len(rows)))
    return attribute_frame(ids, attributes if fields else None)
