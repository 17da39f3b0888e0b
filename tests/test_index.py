"""The vector index contract, run against every backend (FAISS, and Milvus through Milvus Lite).

Every result is checked against brute-force numpy on random unit vectors.
"""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pandas as pd
import pytest

from dashclip.index import build_index, open_index
from dashclip.index import base as index_base

N, D = 400, 24
MODEL = "model-aaa"

BACKENDS = ["faiss"]
if importlib.util.find_spec("milvus_lite") and importlib.util.find_spec("pymilvus"):
    BACKENDS.append("milvus")


def unit(rng, n, d=D):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    vectors = unit(rng, N)
    ids = [10_000 + i for i in range(N)]
    attrs = pd.DataFrame({"id": ids,
                          "gender": rng.choice(["Men", "Women", "Unisex"], N),
                          "baseColour": rng.choice(["Red", "Blue", "Black", 'Navy "Dark"'], N)})
    attrs.loc[3, "baseColour"] = None  # a missing attribute must never match a filter
    queries = unit(rng, 8)
    return vectors, ids, attrs, queries


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    # One Milvus Lite database for the whole module: starting it is the slow part.
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def build(backend, milvus_uri, data, tmp_path):
    """build(**overrides) -> index in tmp_path/index, with this test's backend."""
    vectors, ids, attrs, _ = data

    def _build(out=None, vectors=vectors, ids=ids, attributes=attrs, **kw):
        uri = milvus_uri if backend == "milvus" else None
        return build_index(vectors, ids, out or tmp_path / "index", meta={"model_id": MODEL},
                           backend=backend, attributes=attributes, uri=uri, **kw)
    return _build


def brute_force(vectors, ids, queries, k, mask=None):
    scores = queries @ vectors.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_ids = [[ids[j] for j in row if np.isfinite(scores[r, j])] for r, row in enumerate(order)]
    return top_ids, np.take_along_axis(scores, order, 1)


def assert_same(got, want):
    (got_ids, got_scores), (want_ids, want_scores) = got, want
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores[:, :len(want_ids[0])], want_scores[:, :len(want_ids[0])], atol=1e-5)


def test_search_is_exact(build, data):
    vectors, ids, _, queries = data
    index = build()
    assert len(index) == N and index.dim == D
    assert index.meta["model_id"] == MODEL and index.meta["metric"] == "inner_product"
    got = index.search(queries, 10)
    assert got[1].shape == (len(queries), 10) and got[1].dtype == np.float32
    assert_same(got, brute_force(vectors, ids, queries, 10))
    # a single vector is one query; ids are the catalog's ids, as plain Python ints
    one_ids, _ = index.search(queries[0], 3)
    assert one_ids == [got[0][0][:3]] and type(one_ids[0][0]) is int


def test_filters_are_exact(build, data):
    vectors, ids, attrs, queries = data
    index = build()
    filters = {"gender": ["Women", "Unisex"], "baseColour": ["Red", 'Navy "Dark"']}
    mask = (attrs["gender"].isin(filters["gender"]) & attrs["baseColour"].isin(filters["baseColour"])).to_numpy()
    got = index.search(queries, 10, filters=filters)
    assert_same(got, brute_force(vectors, ids, queries, 10, mask))
    allowed = set(np.array(ids)[mask].tolist())
    assert all(i in allowed for row in got[0] for i in row)


def test_filter_errors_and_values(build, data):
    _, _, attrs, queries = data
    index = build()
    with pytest.raises(ValueError, match=r"unknown filter field 'colour'.*gender, baseColour"):
        index.search(queries, 5, filters={"colour": ["Red"]})
    assert index.attribute_values("gender") == ["Men", "Unisex", "Women"]
    assert index.attribute_values("baseColour") == sorted(['Black', 'Blue', 'Navy "Dark"', 'Red'])
    with pytest.raises(ValueError, match="unknown filter field"):
        index.attribute_values("nope")
    ids, scores = index.search(queries, 5, filters={"gender": ["Nobody"]})
    assert ids == [[]] * len(queries) and scores.shape == (len(queries), 0)


def test_k_larger_than_index(build, data):
    vectors, ids, attrs, queries = data
    index = build()
    got_ids, scores = index.search(queries[:2], 10 * N)
    assert scores.shape == (2, N) and sorted(got_ids[0]) == sorted(ids)
    mask = (attrs["gender"] == "Men").to_numpy()
    got = index.search(queries[:2], 10 * N, filters={"gender": ["Men"]})
    assert got[1].shape == (2, int(mask.sum()))
    assert_same(got, brute_force(vectors, ids, queries[:2], int(mask.sum()), mask))
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match=rf"shape \[Q, {D}\]"):
        index.search(np.zeros((2, D + 1), np.float32), 3)
    with pytest.raises(ValueError, match="queries: row 1 has NaN"):
        index.search(np.stack([queries[0], np.full(D, np.nan, np.float32)]), 3)


def test_add_remove_save_reopen(build, data, tmp_path):
    vectors, ids, attrs, queries = data
    index = build()
    rng = np.random.default_rng(1)
    new_vectors = unit(rng, 3)
    new_ids = [1, 2, 3]
    index.add(new_ids, new_vectors, pd.DataFrame({"gender": ["Women"] * 3, "baseColour": ["Red"] * 3}))
    assert len(index) == N + 3 and index.has(2) and index.has("2")
    got_ids, scores = index.search(new_vectors, 1)
    assert [r[0] for r in got_ids] == new_ids and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    removed = ids[:50]
    index.remove(removed + [1])
    assert len(index) == N - 48 and not index.has(ids[0]) and not index.has(1)
    all_vectors = np.concatenate([vectors[50:], new_vectors[1:]])
    all_ids = ids[50:] + new_ids[1:]
    want = brute_force(all_vectors, all_ids, queries, 10)
    assert_same(index.search(queries, 10), want)
    index.save()
    reopened = open_index(tmp_path / "index", model_id=MODEL)
    assert len(reopened) == N - 48 and reopened.meta["n"] == N - 48
    assert_same(reopened.search(queries, 10), want)
    assert_same(reopened.search(queries, 10, filters={"gender": ["Women"]}),
                brute_force(all_vectors, all_ids, queries, 10,
                            np.array([(i in new_ids) or attrs.set_index("id").loc[i, "gender"] == "Women"
                                      for i in all_ids])))
    # changes after reopening persist too
    reopened.add([4], new_vectors[:1])
    reopened.save()
    assert open_index(tmp_path / "index").has(4)


def test_duplicate_and_unknown_ids(build, data):
    vectors, ids, attrs, _ = data
    with pytest.raises(ValueError, match=f"duplicate product id {ids[0]}"):
        build(ids=[ids[0]] + ids[1:-1] + [ids[0]], attributes=None)
    index = build()
    with pytest.raises(ValueError, match=f"product id {ids[5]} is already in the index"):
        index.add([999_999, ids[5]], vectors[:2])
    assert len(index) == N and not index.has(999_999)  # nothing half-added
    with pytest.raises(ValueError, match="product id 424242 is not in the index"):
        index.remove([ids[0], 424242])
    assert len(index) == N and index.has(ids[0])  # nothing half-removed
    with pytest.raises(ValueError, match="int product ids, got str"):
        index.add(["abc"], vectors[:1])


def test_string_ids(build, data):
    vectors, _, _, queries = data
    sids = [f"sku-{i}" for i in range(N)]
    index = build(ids=sids, attributes=None)
    assert_same(index.search(queries, 5), brute_force(vectors, sids, queries, 5))
    assert index.has("sku-3") and not index.has(3) and index.fields == []
    np.testing.assert_allclose(index.vectors(["sku-7", "sku-3"]), vectors[[7, 3]], atol=1e-6)


def test_model_id_mismatch(build, tmp_path):
    build()
    with pytest.raises(ValueError) as e:
        open_index(tmp_path / "index", model_id="model-bbb")
    msg = str(e.value)
    assert str(tmp_path / "index") in msg and MODEL in msg and "model-bbb" in msg
    assert "dashclip index build" in msg
    assert len(open_index(tmp_path / "index", model_id=MODEL)) == N


def test_crash_mid_build_keeps_previous_index(build, data, tmp_path, monkeypatch):
    vectors, ids, _, queries = data
    build()
    want = open_index(tmp_path / "index").search(queries, 5)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(index_base, "write_table", crash)  # the one writer of ids/attributes (base.save)
    with pytest.raises(OSError, match="simulated"):
        build(vectors=vectors[::-1].copy())
    monkeypatch.undo()
    reopened = open_index(tmp_path / "index", model_id=MODEL)
    assert len(reopened) == N
    assert_same(reopened.search(queries, 5), want)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".index")]
    assert leftovers == []


def test_missing_and_corrupt_dirs(build, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        open_index(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/meta.json: missing"):
        open_index(tmp_path / "empty")
    build()
    meta_path = tmp_path / "index" / "meta.json"
    good = meta_path.read_text()
    meta_path.write_text(good[:20])
    with pytest.raises(ValueError, match=r"index/meta.json: corrupt"):
        open_index(tmp_path / "index")
    meta_path.write_text(good)
    if json.loads(good)["backend"] == "faiss":
        data = tmp_path / "index" / json.loads(good)["data"]
        (data / "index.faiss").write_bytes(b"garbage")
        with pytest.raises(ValueError, match=r"index/data\.[^/]+/index.faiss: corrupt"):
            open_index(tmp_path / "index")


def test_attributes_must_cover_every_id(build, data):
    _, ids, attrs, _ = data
    with pytest.raises(ValueError, match=f"no row for product id.*{ids[-1]}"):
        build(attributes=attrs.iloc[:-1])
    with pytest.raises(ValueError, match="rows for"):
        build(attributes=attrs.drop(columns=["id"]).iloc[:-1])


def test_ids_must_be_all_ints_or_all_strings(tmp_path):
    vectors = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="all ints or all strings, not a mix"):
        build_index(vectors, [1, "b", 3], tmp_path / "i")
    with pytest.raises(ValueError, match="row 1: product ids must be ints or strings, got NoneType None"):
        build_index(vectors, [1, None, 3], tmp_path / "i")
    with pytest.raises(ValueError, match=r"expected shape \[2, D\], got \[3, 3\]"):
        build_index(vectors, [1, 2], tmp_path / "i")
    with pytest.raises(ValueError, match="unknown index backend 'qdrant'"):
        build_index(vectors, [1, 2, 3], tmp_path / "i", backend="qdrant")
    assert not (tmp_path / "i").exists()


def test_vectors_read_back_in_the_order_asked(build, data, tmp_path):
    vectors, ids, _, _ = data
    index = build()
    got = index.vectors([ids[5], ids[0], str(ids[9])])     # an id as text, as a URL gives it
    assert got.dtype == np.float32 and got.shape == (3, D)
    np.testing.assert_allclose(got, vectors[[5, 0, 9]], atol=1e-6)
    assert index.vectors([]).shape == (0, D)
    with pytest.raises(KeyError, match="not in the index"):
        index.vectors([ids[0], 123])
    # after changes and a reopen: the live products' vectors, by id
    index.add([1], vectors[7:8])
    index.remove([ids[5]])
    index.save()
    reopened = open_index(tmp_path / "index", model_id=MODEL)
    np.testing.assert_allclose(reopened.vectors([1, ids[9]]), vectors[[7, 9]], atol=1e-6)
    with pytest.raises(KeyError):
        reopened.vectors([ids[5]])


def test_vectors_of_an_hnsw_and_an_ivf_index(data, tmp_path):
    vectors, ids, _, _ = data
    hnsw = build_index(vectors, ids, tmp_path / "hnsw", meta={"model_id": MODEL}, factory="HNSW16,Flat")
    np.testing.assert_allclose(hnsw.vectors(ids[:4]), vectors[:4], atol=1e-6)
    # an IVF index keeps no map from label to list: it cannot read vectors back, and says so with None
    ivf = build_index(vectors, ids, tmp_path / "ivf", meta={"model_id": MODEL}, factory="IVF4,Flat")
    assert ivf.vectors(ids[:4]) is None
