"""FAISS-only behaviour: default factory choice, HNSW tuning and tombstones, the post-filter fallback."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashclip.index import build_index, open_index
from dashclip.index import faiss_index


def unit(rng, n, d=16):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 600
    attrs = pd.DataFrame({"gender": rng.choice(["Men", "Women"], n), "season": rng.choice(["Summer", "Fall"], n)})
    return unit(rng, n), [f"p{i}" for i in range(n)], attrs, unit(rng, 6)


def exact(vectors, ids, queries, k, mask):
    scores = queries @ vectors.T
    scores[:, ~mask] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order]


def test_default_is_flat_below_threshold_and_hnsw_above(data, tmp_path, monkeypatch):
    vectors, ids, attrs, queries = data
    assert build_index(vectors, ids, tmp_path / "flat").meta["factory"] == "Flat"
    monkeypatch.setattr(faiss_index, "EXACT_MAX", 100)
    index = build_index(vectors, ids, tmp_path / "hnsw", attributes=attrs)
    meta = index.meta
    assert meta["factory"] == "HNSW32,Flat" and meta["ef_search"] in faiss_index.EF_SEARCH_CANDIDATES
    assert meta["ef_search_tuned_recall_at_10"] >= 0.95 and meta["ef_construction"] > 0
    assert open_index(tmp_path / "hnsw").meta["ef_search"] == meta["ef_search"]
    # on 600 vectors HNSW with a tuned efSearch finds the exact neighbours
    mask = (attrs["gender"] == "Women").to_numpy()
    got, _ = index.search(queries, 5, filters={"gender": ["Women"]})
    assert got == exact(vectors, ids, queries, 5, mask)


def test_hnsw_remove_leaves_tombstones_that_search_skips(data, tmp_path):
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, tmp_path / "i", factory="HNSW16,Flat", attributes=attrs)
    top, _ = index.search(queries, 3)
    gone = sorted({row[0] for row in top})
    index.remove(gone)
    index.save()
    reopened = open_index(tmp_path / "i")
    assert reopened._index.ntotal == len(ids) and len(reopened) == len(ids) - len(gone)
    got, _ = reopened.search(queries, 3)
    assert not set(gone) & {i for row in got for i in row}
    assert got == exact(vectors, ids, queries, 3, np.array([i not in gone for i in ids]))


def test_post_filter_fallback_is_exact_for_flat(data, tmp_path):
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, tmp_path / "i", attributes=attrs)
    filters = {"gender": ["Men"], "season": ["Fall"]}
    with_selector = index.search(queries, 7, filters=filters)
    assert index._selector_ok is True
    index._selector_ok = False  # as for an index type that rejects an IDSelector
    fallback = index.search(queries, 7, filters=filters)
    assert fallback[0] == with_selector[0]
    np.testing.assert_allclose(fallback[1], with_selector[1], atol=1e-6)
    mask = (attrs["gender"].eq("Men") & attrs["season"].eq("Fall")).to_numpy()
    assert fallback[0] == exact(vectors, ids, queries, 7, mask)


def test_factory_strings(data, tmp_path):
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, tmp_path / "ivf", factory="IVF4,Flat", attributes=attrs)
    faiss_index._inner(index._index).nprobe = 4  # all lists: exact
    got, _ = index.search(queries, 5, filters={"season": ["Summer"]})
    assert got == exact(vectors, ids, queries, 5, (attrs["season"] == "Summer").to_numpy())
    with pytest.raises(ValueError, match="not a valid FAISS index factory string"):
        build_index(vectors, ids, tmp_path / "bad", factory="NoSuchIndex42")
    with pytest.raises(ValueError, match="leave out IDMap"):
        build_index(vectors, ids, tmp_path / "bad", factory="IDMap,Flat")
    assert not (tmp_path / "bad").exists()


def test_refining_index_tunes_k_factor_keeps_it_and_reranks_exactly(data, tmp_path):
    """A compressed scan re-ranked exactly (`PQ..fs,RFlat`): k_factor is its efSearch."""
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, tmp_path / "pq", factory="PQ8x4fs,RFlat", attributes=attrs)
    meta = dict(index.meta)
    assert faiss_index.search_setting(index._index) == "k_factor" and "ef_search" not in meta
    assert meta["k_factor"] in faiss_index.K_FACTOR_CANDIDATES and meta["k_factor_tuned_recall_at_10"] >= 0.95
    truth = exact(vectors, ids, queries, 10, np.ones(len(ids), bool))
    def recall(idx):
        got, _ = idx.search(queries, 10)
        return np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
    # 4-bit codes alone rank poorly; the tuned re-ranking depth is what makes the index accurate
    index.set_search_setting(1)
    coarse = recall(index)
    reopened = open_index(tmp_path / "pq")
    assert faiss_index._inner(reopened._index).k_factor == meta["k_factor"] > 1
    assert recall(reopened) >= 0.9 > coarse
    # deep enough to re-rank all 600 vectors, a filtered search is exact search over the allowed ones
    reopened.set_search_setting(64)
    mask = (attrs["season"] == "Fall").to_numpy()
    got, scores = reopened.search(queries, 5, filters={"season": ["Fall"]})
    assert got == exact(vectors, ids, queries, 5, mask)
    np.testing.assert_allclose(scores[:, 0], np.max((queries @ vectors.T)[:, mask], axis=1), atol=1e-5)
    gone = sorted({row[0] for row in got})
    reopened.remove(gone)
    got, _ = reopened.search(queries, 5)
    assert not set(gone) & {i for row in got for i in row}
    # an added product lands in both the codes and the exact vectors: each query finds its own copy first
    reopened.add([f"new{i}" for i in range(len(queries))], queries,
                 pd.DataFrame({"gender": ["Men"] * len(queries), "season": ["Fall"] * len(queries)}))
    got, scores = reopened.search(queries, 1, filters={"season": ["Fall"]})
    assert got == [[f"new{i}"] for i in range(len(queries))]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="no efSearch or k_factor"):
        build_index(vectors, ids, tmp_path / "flat").set_search_setting(8)


def test_hnsw_tunes_on_real_queries_when_given(tmp_path):
    """Queries far from every product (as shoppers' are) need a wider beam than noisy copies of products:
    tuned on them, the index meets the recall target on them; an exact index never encodes the queries."""
    rng = np.random.default_rng(5)
    vectors, ids = unit(rng, 4000, 32), [f"p{i}" for i in range(4000)]
    queries = unit(rng, 300, 32)
    copies = build_index(vectors, ids, tmp_path / "copies", factory="HNSW8,Flat")
    tuned = build_index(vectors, ids, tmp_path / "queries", factory="HNSW8,Flat", tune_queries=lambda: queries)
    assert copies.meta["ef_search_tuned_on"] == "noisy copies of stored vectors"
    assert tuned.meta["ef_search_tuned_on"] == "300 queries"
    assert tuned.meta["ef_search"] > copies.meta["ef_search"]

    def recall(index):
        got, _ = index.search(queries, 10)
        truth = exact(vectors, ids, queries, 10, np.ones(len(ids), bool))
        return np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])

    assert recall(tuned) >= faiss_index.TUNE_RECALL_TARGET > recall(copies)
    assert abs(recall(tuned) - tuned.meta["ef_search_tuned_recall_at_10"]) < 1e-6

    def never():
        raise AssertionError("an exact index has nothing to tune")
    assert build_index(vectors, ids, tmp_path / "flat", factory="Flat", tune_queries=never).meta["factory"] == "Flat"
