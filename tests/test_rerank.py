"""Re-ranking (issue 25 item 4): a cross-encoder labeler re-orders the first stage's top products, by one rule
(`ranking.rerank_order`) in the Python API, `dashclip search`, the HTTP service and the evaluation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.labeling.rerank import RERANKER_DIR, CrossEncoderReranker
from dashclip.ranking import rerank_order
from dashclip.serving.search import Searcher
from test_labeling_support import write_tiny_bert
from test_search_fixtures import shared_shop

runner = CliRunner()
QUERIES = ["green watch", "red dress for women", "blue shoes"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return shared_shop(tmp_path_factory)


@pytest.fixture(scope="module")
def labeler_dir(shop, tmp_path_factory):
    """A tiny cross-encoder labeler, trained a little on the shop's titles (grade 2: both words in the title)."""
    from dashclip.data.catalog import product_text
    from dashclip.labeling.labelers.cross_encoder import CrossEncoderConfig, train_cross_encoder

    root = tmp_path_factory.mktemp("rerank")
    base = write_tiny_bert(root / "base")
    rows = shop.catalog.products.to_dict("records")
    queries, texts, grades = [], [], []
    for q in QUERIES:
        words = q.split()[:2]
        for r in rows:
            title = str(r["title"]).lower()
            queries.append(q)
            texts.append(product_text(r, shop.catalog.attributes))
            grades.append(sum(w in title for w in words))
    out = root / "labeler"
    train_cross_encoder(queries, texts, grades, out, base=str(base),
                        config=CrossEncoderConfig(max_length=32, epochs=2, batch_size=16, lr=5e-3))
    return out


def test_rerank_order_reorders_the_head_keeps_ties_and_the_tail():
    assert rerank_order(["a", "b", "c", "d", "e"], [0.1, 0.9, 0.5]) == ["b", "c", "a", "d", "e"]
    assert rerank_order(["a", "b", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]   # equal: first-stage order
    assert rerank_order(["a", "b"], []) == ["a", "b"]
    with pytest.raises(ValueError, match="3 re-ranker scores for a list of 2"):
        rerank_order(["a", "b"], [1, 2, 3])


def test_searcher_reranks_the_top_by_expected_grade(shop, labeler_dir):
    reranker = CrossEncoderReranker(labeler_dir, depth=8)
    plain = Searcher(shop.model, shop.index, shop.catalog)
    s = Searcher(shop.model, shop.index, shop.catalog, reranker=reranker)
    assert s.default_rerank and not plain.default_rerank
    for q in QUERIES:
        first = [h.id for h in plain.search(q, k=8)]
        grades = reranker.expected_grades(shop.catalog, [q] * len(first), first)
        assert np.all((grades >= 0) & (grades <= 2))
        want = [first[i] for i in sorted(range(len(first)), key=lambda i: (-grades[i], i))]
        hits = s.search(q, k=5)
        assert [h.id for h in hits] == want[:5]                  # k < depth: the best 5 of the re-ranked 8
        by_id = dict(zip(first, grades.tolist()))
        assert [h.rerank_score for h in hits] == [pytest.approx(by_id[h.id], abs=1e-5) for h in hits]
        assert [h.id for h in s.search(q, k=8, rerank=False)] == first
        assert all(h.rerank_score is None for h in s.search(q, k=8, rerank=False))
        long = s.search(q, k=12)                                # k > depth: the tail keeps the first stage's order
        assert [h.id for h in long[8:]] == [h.id for h in plain.search(q, k=12)][8:]
        assert all(h.rerank_score is None for h in long[8:])
    with pytest.raises(ValueError, match="no re-ranker"):
        plain.search("green watch", rerank=True)


def test_cli_and_service_rerank_with_the_model_dirs_reranker(shop, labeler_dir, tmp_path):
    from fastapi.testclient import TestClient

    from dashclip.serving.service import create_app

    model_dir = tmp_path / "model"
    shutil.copytree(shop.model_dir, model_dir)
    shutil.copytree(labeler_dir, model_dir / RERANKER_DIR)
    (model_dir / RERANKER_DIR / "rerank.json").write_text(json.dumps({"depth": 6}))
    s = Searcher.open(model_dir, shop.index_dir, shop.catalog_dir)
    assert s.reranker is not None and s.reranker.depth == 6
    want = [h.id for h in s.search("green watch", k=6)]

    def cli(*flags):
        res = runner.invoke(app, ["search", "green watch", "--model", str(model_dir), "--index", str(shop.index_dir),
                                  "--k", "6", *flags])
        assert res.exit_code == 0, res.output
        return res.output
    assert "re-ranker" in cli() and "re-ranker" not in cli("--no-rerank")
    res = runner.invoke(app, ["search", "green watch", "--model", str(shop.model_dir), "--index",
                              str(shop.index_dir), "--rerank"])
    assert res.exit_code == 2 and "has no reranker/" in res.output
    out = tmp_path / "runs.jsonl"
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"qid": "a", "query": "green watch"}\n')
    res = runner.invoke(app, ["search", "--model", str(model_dir), "--index", str(shop.index_dir), "--queries",
                              str(queries), "--k", "6", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["product_ids"] == want

    with TestClient(create_app(s, watch_seconds=0)) as client:
        body = client.get("/search", params={"q": "green watch", "k": 6}).json()
        assert body["reranked"] and [r["id"] for r in body["results"]] == want
        assert all(0 <= r["rerank_score"] <= 2 for r in body["results"])
        body = client.get("/search", params={"q": "green watch", "k": 6, "rerank": "false"}).json()
        assert not body["reranked"] and all(r["rerank_score"] is None for r in body["results"])
    plain = Searcher(shop.model, shop.index, shop.catalog)
    with TestClient(create_app(plain, watch_seconds=0)) as client:
        r = client.get("/search", params={"q": "green watch", "rerank": "true"})
        assert r.status_code == 400 and "no re-ranker" in r.json()["detail"]


def test_the_evaluation_reranks_as_search_does(shop, labeler_dir):
    """`RerankScorer` over a first stage ranks exactly as `Searcher.search(rerank=True)` (one rule)."""
    from dashclip.evaluation.baselines import EmbeddingScorer, RerankScorer, rank
    from dashclip.models.embeddings import load_embeddings

    emb = load_embeddings(shop.index_dir.parent / f"{shop.index_dir.name}-embeddings")
    live = set(shop.index.ids)
    keep = [i for i, p in enumerate(emb.ids.tolist()) if p in live]
    ids = [emb.ids[i].item() for i in keep]
    vectors = np.asarray(emb.vectors["fused"])[keep]
    reranker = CrossEncoderReranker(labeler_dir, depth=8)
    s = Searcher(shop.model, shop.index, shop.catalog, reranker=reranker)
    first = EmbeddingScorer("model", lambda qs: s.encode(qs), vectors, ids)
    got = rank(RerankScorer("model + re-rank", first, reranker, shop.catalog), QUERIES, k=10)
    want = [[h.id for h in s.search(q, k=10)] for q in QUERIES]
    assert got == want
