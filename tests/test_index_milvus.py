"""Milvus-only behaviour (through Milvus Lite): filter expressions, default Lite file, collection lifecycle."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dashclip.index import build_index, open_index
from dashclip.index.milvus_index import client_for, filter_expression, literal, resolve_uri

pytest.importorskip("milvus_lite")


def unit(rng, n, d=12):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_filter_expression_quotes_every_value():
    names = {"baseColour": "a0", "gender": "a1"}
    expr = filter_expression({"baseColour": ['Red" or a0 != "', "x\\y"], "gender": ["Women"]}, names)
    assert expr == 'a0 in ["Red\\" or a0 != \\"", "x\\\\y"] and a1 in ["Women"]'
    assert json.loads(literal("Größe\n✓")) == "Größe\n✓"


def test_hostile_filter_values_match_literally(tmp_path):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 40)
    colours = ['Red" or a0 != "', "Navy", "Größe ✓", "back\\slash"] * 10
    index = build_index(vectors, list(range(40)), tmp_path / "i", backend="milvus",
                        attributes=pd.DataFrame({"colour": colours}))
    assert index.meta["uri"] == "milvus.db" and (tmp_path / "i" / "milvus.db").exists()
    for value in set(colours):
        ids, _ = index.search(vectors[:2], 40, filters={"colour": [value]})
        want = {i for i, c in enumerate(colours) if c == value}
        assert all(set(row) == want for row in ids), value


def test_rebuild_keeps_one_previous_collection_and_hnsw_works(tmp_path):
    rng = np.random.default_rng(1)
    vectors, queries = unit(rng, 300), unit(rng, 20)
    uri = str(tmp_path / "shared.db")
    ids = [f"s{i}" for i in range(300)]
    first = build_index(vectors, ids, tmp_path / "i", backend="milvus", uri=uri)
    other = build_index(vectors, ids, tmp_path / "other", backend="milvus", uri=uri)
    second = build_index(vectors, ids, tmp_path / "i", backend="milvus", uri=uri)
    client = client_for(resolve_uri(uri, tmp_path))
    # the replaced collection still answers (a server may still be searching it) ...
    assert first.search(queries[:1], 3)[0] == second.search(queries[:1], 3)[0]
    second = build_index(vectors, ids, tmp_path / "i", backend="milvus", uri=uri, factory="HNSW")
    # ... until the next build; another index dir's collection in the same database is never touched
    assert first.meta["collection"] not in client.list_collections()
    assert other.meta["collection"] in client.list_collections()
    assert second.meta["collection"] in client.list_collections()
    assert second.meta["factory"] == "HNSW" and second.meta["ef_search"] > 0
    got, _ = open_index(tmp_path / "i").search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(g) & {f"s{j}" for j in t}) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.95
    assert "token" not in json.dumps(second.meta).lower()


def test_missing_collection_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(2)
    index = build_index(unit(rng, 10), list(range(10)), tmp_path / "i", backend="milvus")
    client_for(resolve_uri("milvus.db", tmp_path / "i")).drop_collection(index.meta["collection"])
    with pytest.raises(ValueError, match=rf"collection '{index.meta['collection']}' is not in Milvus"):
        open_index(tmp_path / "i")
