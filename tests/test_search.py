"""Searcher: the one search path (vector, filters, hybrid RRF, batches), and `dashclip search` with its
batch contract, on a tiny imported catalog, the tiny random model and a FAISS index."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.serving.search import (HYBRID_DEPTH, MAX_QUERY_CHARS, RRF_K, Searcher, normalise_query,
                                     parse_filter_args)
from test_search_fixtures import NO_IMAGE_ID, build_shop_index, make_model, shared_shop

runner = CliRunner()


def ids(hits):
    return [h.id for h in hits]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return shared_shop(tmp_path_factory)


@pytest.fixture(scope="module")
def searcher(shop):
    return Searcher(shop.model, shop.index, shop.catalog)


# ------------------------------------------------------------------------------------------ queries
def test_normalise_query():
    assert normalise_query("  red\tsummer\n dress ") == "red summer dress"
    assert normalise_query("ｒｅｄ\u00a0dress\x00") == "red dress"   # full-width letters, NBSP, NUL
    for bad in ("", "   ", "\x00\x01"):
        with pytest.raises(ValueError, match="empty"):
            normalise_query(bad)
    with pytest.raises(ValueError, match=f"limit is {MAX_QUERY_CHARS}"):
        normalise_query("a" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(ValueError, match="string"):
        normalise_query(None)


def test_parse_filter_args():
    assert parse_filter_args(["gender=Women", "gender=Men", "season=Summer", "gender=Women"]) == \
        {"gender": ["Women", "Men"], "season": ["Summer"]}
    assert parse_filter_args(["usage:Smart Casual: Office"], separators=":") == {"usage": ["Smart Casual: Office"]}
    for bad in ("gender", "=Women", "gender=", " = "):
        with pytest.raises(ValueError, match="field=value"):
            parse_filter_args([bad])


# ------------------------------------------------------------------------------------------ vector search
def test_search_matches_the_index(shop, searcher):
    """A hit list is exactly the index's answer for the encoded query, with catalog titles/attributes."""
    hits = searcher.search("  Red   summer dress ", k=5)
    vec = shop.model.encode_query(["Red summer dress"]).numpy()
    ids, scores = shop.index.search(vec, 5)
    assert [h.id for h in hits] == ids[0]
    assert np.allclose([h.score for h in hits], scores[0], atol=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(-1.0001 <= h.score <= 1.0001 for h in hits)
    first = hits[0]
    product = shop.catalog.product(first.id)
    assert (first.title, first.category, first.image) == (product["title"], product["category"], product["image"])
    assert first.attributes == {a: product[a] for a in ("gender", "baseColour", "season")}
    assert first.to_dict()["id"] == first.id


def test_search_k_and_errors(searcher):
    assert len(searcher.search("watch", k=1000)) == 31  # k larger than the catalog: all of it
    for bad in (0, -1, 1.5, "ten"):
        with pytest.raises(ValueError, match="k must"):
            searcher.search("watch", k=bad)
    with pytest.raises(ValueError, match="empty"):
        searcher.search("   ")


def test_filters(searcher):
    hits = searcher.search("something to wear", k=50, filters={"gender": ["women"], "baseColour": ["Red", "blue"]})
    assert hits and all(h.attributes["gender"] == "Women" and h.attributes["baseColour"] in ("Red", "Blue")
                        for h in hits)
    assert len(hits) == 2 * 4  # (dress, heels, T-shirt, watch for women) x 2 colours
    by_category = searcher.search("x", k=50, filters={"category": ["Watches"]})
    assert {h.category for h in by_category} == {"Watches"}
    # the catalog's own name of its category column (here "type") works too, as articleType does for fashion
    assert searcher.check_filters({"type": ["watches"]}) == {"category": ["Watches"]}
    assert [h.id for h in searcher.search("x", k=50, filters={"type": ["Watches"]})] == [h.id for h in by_category]
    with pytest.raises(ValueError, match="unknown filter field 'colour'.*baseColour"):
        searcher.search("x", filters={"colour": ["Red"]})
    with pytest.raises(ValueError, match="unknown value 'Purple' for filter 'baseColour'.*Black"):
        searcher.search("x", filters={"baseColour": ["Purple"]})
    with pytest.raises(ValueError, match="no values"):
        searcher.search("x", filters={"gender": []})
    assert searcher.filter_values("season") == ["Summer", "Winter"]


def test_search_batch_equals_single_searches(searcher):
    queries = [f"query number {i} red" for i in range(70)]  # more than one encoder batch
    done = []
    batch = searcher.search_batch(queries, k=7, progress=done.append)
    assert sum(done) == 70 and len(done) == 2
    for q, hits in zip(queries[::23], batch[::23]):
        assert [h.id for h in hits] == [h.id for h in searcher.search(q, k=7)]
    with pytest.raises(ValueError, match="query 2: query is empty"):
        searcher.search_batch(["ok", " "], k=3)


# ------------------------------------------------------------------------------------------ hybrid
def test_an_index_records_its_default_search_and_every_caller_follows_it(shop, searcher, tmp_path):
    """`set_search_defaults` (what `dashclip train` records after its evaluation) makes hybrid the default of
    the Python API, `dashclip search` and the HTTP service; --dense / hybrid=false still ask for vectors only."""
    import shutil

    from fastapi.testclient import TestClient

    from dashclip.index import open_index, search_defaults, set_search_defaults
    from dashclip.serving.service import create_app

    copy = tmp_path / "index"
    shutil.copytree(shop.index_dir, copy)
    assert searcher.default_hybrid is False and search_defaults(open_index(copy).meta) == {}
    assert set_search_defaults(copy, True, why="chosen on the evaluation grades") == \
        {"hybrid": True, "why": "chosen on the evaluation grades"}
    index = open_index(copy)
    assert len(index) == len(shop.index) and index.ids == shop.index.ids      # nothing else changed
    s = Searcher(shop.model, index, shop.catalog)
    q = "green watch for men"
    hybrid, dense = ids(searcher.search(q, k=8, hybrid=True)), ids(searcher.search(q, k=8))
    assert hybrid != dense
    assert s.default_hybrid and ids(s.search(q, k=8)) == hybrid and ids(s.search(q, k=8, hybrid=False)) == dense

    def cli(*flags):
        res = runner.invoke(app, ["search", q, "--model", str(shop.model_dir), "--index", str(copy),
                                  "--catalog", str(shop.catalog_dir), "--k", "8", *flags])
        assert res.exit_code == 0, res.output
        return res.output
    assert "hybrid: RRF scores" in cli() and "hybrid" not in cli("--dense")

    with TestClient(create_app(s, watch_seconds=0)) as client:
        assert s.has_keyword_index                     # BM25 built at start, not in the first request
        body = client.get("/search", params={"q": q, "k": 8}).json()
        assert body["hybrid"] is True and [r["id"] for r in body["results"]] == hybrid
        body = client.get("/search", params={"q": q, "k": 8, "hybrid": "false"}).json()
        assert body["hybrid"] is False and [r["id"] for r in body["results"]] == dense


def test_bm25_side_respects_filters(searcher):
    ids = searcher.bm25_search("green watch", 50)
    titles = [searcher.catalog.product(i)["title"] for i in ids]
    assert titles[0].startswith("Green") and "Watch" in titles[0]
    assert all(("green" in t.lower()) or ("watch" in t.lower()) for t in titles)  # no zero-score rows
    women = searcher.bm25_search("green watch", 50, {"gender": ["Women"]})
    assert women and all(searcher.catalog.product(i)["gender"] == "Women" for i in women)
    assert searcher.bm25_search("zebra", 10) == []


def test_hybrid_is_rrf_of_vector_and_bm25(shop, searcher):
    q, k = "green watch for men", 8
    vector = [h.id for h in searcher.search(q, k=HYBRID_DEPTH)]
    keyword = searcher.bm25_search(q, HYBRID_DEPTH)
    expected = {}
    for ranked in (vector, keyword):
        for rank, pid in enumerate(ranked, 1):
            expected[pid] = expected.get(pid, 0.0) + 1.0 / (RRF_K + rank)
    hits = searcher.search(q, k=k, hybrid=True)
    assert len(hits) == k
    for h in hits:
        assert h.score == pytest.approx(expected[h.id])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    best = max(expected.values())
    assert hits[0].score == pytest.approx(best)
    # The keyword side lifts the exact title match into the top even though the random model can't see it.
    green_men_watch = shop.catalog.products.query("title == 'Green Winter Watch for Men' or "
                                                  "title == 'Green Summer Watch for Men'")["id"].tolist()
    assert set(green_men_watch) & {h.id for h in hits[:3]}
    filtered = searcher.search(q, k=k, hybrid=True, filters={"gender": ["Women"]})
    assert filtered and all(h.attributes["gender"] == "Women" for h in filtered)


# ------------------------------------------------------------------------------------------ open
def test_open_checks_model_and_catalog(shop, tmp_path):
    s = Searcher.open(shop.model_dir, shop.index_dir)  # catalog from the index's meta.json
    assert s.catalog.root == shop.catalog_dir and len(s.index) == 31
    assert s.model_id == shop.model.model_id
    other = make_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="built with model"):
        Searcher.open(tmp_path / "other", shop.index_dir, model=other)
    bare = build_shop_index(shop.model, shop.catalog, tmp_path / "bare")
    bare.meta.pop("catalog_dir")
    bare.save()
    with pytest.raises(ValueError, match="--catalog"):
        Searcher.open(shop.model_dir, tmp_path / "bare", model=shop.model)
    assert len(Searcher.open(shop.model_dir, tmp_path / "bare", shop.catalog_dir, model=shop.model).index) == 31


def test_indexed_product_missing_from_catalog_still_a_result(shop, searcher):
    """A product gone from the catalog but still in the index is shown with what the index knows."""
    hit = searcher._hit(NO_IMAGE_ID, 0.5, 1)
    assert hit.title == "Mystery Gift Card" and hit.image is None
    from dataclasses import replace
    catalog = replace(shop.catalog, products=shop.catalog.products[shop.catalog.products["id"] != 100])
    catalog.__dict__.pop("row_of", None)
    ghost = Searcher(shop.model, shop.index, catalog, shop.model.model_id)._hit(100, 0.5, 1)
    assert ghost.title == "100" and ghost.category == "Dresses" and ghost.attributes["gender"] == "Women"


# ------------------------------------------------------------------------------------------ CLI
def invoke(*args):
    result = runner.invoke(app, ["search", *map(str, args)], terminal_width=200)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result.exit_code, output


def test_cli_table(shop):
    code, out = invoke("--model", shop.model_dir, "--index", shop.index_dir, "green watch", "--k", "3",
                       "--filter", "gender=Men", "--hybrid")
    assert code == 0, out
    assert "rank" in out and "category" in out and "Green" in out and "hybrid" in out
    assert "for Women" not in out
    code, out = invoke("--model", shop.model_dir, "--index", shop.index_dir, "watch", "--filter", "gender")
    assert code == 2 and "field=value" in out and "Traceback" not in out
    code, out = invoke("--model", shop.model_dir, "--index", shop.index_dir, "watch", "--filter", "size=M")
    assert code == 2 and "unknown filter field 'size'" in out
    code, out = invoke("--model", shop.model_dir, "--index", shop.root / "nope", "watch")
    assert code == 2 and "nope" in out
    code, out = invoke("--model", shop.model_dir, "--index", shop.index_dir)
    assert code == 2 and "QUERY or --queries" in out


def test_cli_batch_contract(shop, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"qid": f"q{i}", "query": q}) + "\n"
                               for i, q in enumerate(["red dress", "black watch for men", "white heels"])) + "\n")
    out = tmp_path / "runs.jsonl"
    code, text = invoke("--model", shop.model_dir, "--index", shop.index_dir, "--queries", queries, "--k", "100",
                        "--output", out, "-q")
    assert code == 0, text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["qid"] for line in lines] == ["q0", "q1", "q2"]
    assert all(set(line) == {"qid", "product_ids"} and len(line["product_ids"]) == 31 for line in lines)
    searcher = Searcher.open(shop.model_dir, shop.index_dir, model=shop.model)
    assert lines[1]["product_ids"] == [h.id for h in searcher.search("black watch for men", k=100)]
    assert not list(tmp_path.glob(".runs.jsonl*"))  # no temp file left behind

    for content, message in [('{"qid": "a", "query": "ok"}\nnot json\n', "q.jsonl:2: not valid JSON"),
                             ('{"qid": "a"}\n', "q.jsonl:1: missing field 'query'"),
                             ('{"qid": "a", "query": "  "}\n', "q.jsonl:1: field 'query': query is empty"),
                             ('["a", "b"]\n', "q.jsonl:1: expected an object"),
                             ('{"qid": "a", "query": "x"}\n{"qid": "a", "query": "y"}\n', "qid 'a' repeats line 1"),
                             ("\n", "no queries")]:
        queries.write_text(content)
        before = out.read_text()
        code, text = invoke("--model", shop.model_dir, "--index", shop.index_dir, "--queries", queries,
                            "--output", out, "-q")
        assert code == 2 and message in " ".join(text.split()), text
        assert out.read_text() == before  # the previous output is untouched
    code, text = invoke("--model", shop.model_dir, "--index", shop.index_dir, "--queries", queries)
    assert code == 2 and "--output" in text


# ------------------------------------------------------------------------------------------ batching
def test_query_batcher_shares_model_calls(shop, searcher):
    """Concurrent callers get exactly their own vectors, and a busy model serves several callers per call."""
    import threading
    import time

    from dashclip.serving.search import QueryBatcher

    def slow_encode(texts):
        time.sleep(0.05)  # a model call long enough for the other callers to queue up
        return searcher.encode_now(texts)

    batcher = QueryBatcher(slow_encode)
    queries = [f"red dress number {i}" for i in range(16)]
    got = {}

    def call(q):
        got[q] = batcher.encode([q])

    threads = [threading.Thread(target=call, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in queries:
        assert np.allclose(got[q], searcher.encode_now([q]), atol=1e-5)
    assert batcher.batches < len(queries)

    batched = Searcher(shop.model, shop.index, shop.catalog, shop.model.model_id, encoder=batcher)
    assert [h.id for h in batched.search("green watch", k=5)] == [h.id for h in searcher.search("green watch", k=5)]

    def broken(texts):
        raise RuntimeError("model on fire")

    with pytest.raises(RuntimeError, match="model on fire"):
        QueryBatcher(broken).encode(["x"])


def test_query_batcher_searches_concurrent_callers_together(shop, searcher):
    """Concurrent searches come back exactly as each alone would, grouped by filters into shared index calls."""
    import threading
    import time

    from dashclip.serving.search import QueryBatcher

    def slow_encode(texts):
        time.sleep(0.05)
        return searcher.encode_now(texts)

    batcher = QueryBatcher(slow_encode)
    batched = Searcher(shop.model, shop.index, shop.catalog, shop.model.model_id, encoder=batcher)
    gender = searcher.filter_values("gender")[0]
    calls = [(f"red dress number {i}", {"gender": [gender]} if i % 2 else None) for i in range(12)]
    got, errors = {}, []

    def call(i, q, filters):
        try:
            got[i] = batched.search(q, k=5, filters=filters)
        except Exception as e:  # pragma: no cover - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i, q, f)) for i, (q, f) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (q, filters) in enumerate(calls):
        alone = searcher.search(q, k=5, filters=filters)
        assert [h.id for h in got[i]] == [h.id for h in alone]
        assert np.allclose([h.score for h in got[i]], [h.score for h in alone], atol=1e-5)
        if filters:
            assert all(h.attributes.get("gender") == gender for h in got[i])
    assert batcher.index_calls < len(calls)

    class Broken:
        def search(self, *a, **kw):
            raise RuntimeError("index on fire")

    with pytest.raises(RuntimeError, match="index on fire"):
        batcher.search(Broken(), ["x"], 5)
    assert len(batcher.encode(["still serving"])) == 1


def test_query_batcher_searches_on_one_faiss_thread():
    """The service's index calls run in a thread of their own (a pipeline: the encoder thread goes on to the
    next batch), and that thread runs FAISS without an OpenMP team (single_thread_searches). The setting is
    the thread's own, so other threads (the encoder, batch search, evaluation) keep theirs."""
    import threading

    import faiss

    from dashclip.serving.search import QueryBatcher

    main_threads = faiss.omp_get_max_threads()
    if main_threads < 2:
        pytest.skip("one core: FAISS runs one thread anyway")
    seen, encoded_on = [], []

    class Probe:          # an index that records where its searches run and how many OpenMP threads they get
        def search(self, q, k, filters):
            seen.append((threading.current_thread().name, faiss.omp_get_max_threads()))
            return [["p"] for _ in range(len(q))], np.zeros((len(q), 1), dtype=np.float32)

    def encode(texts):
        encoded_on.append((threading.current_thread().name, faiss.omp_get_max_threads()))
        return np.zeros((len(texts), 4), dtype=np.float32)

    batcher = QueryBatcher(encode)
    ids, _ = batcher.search(Probe(), ["x", "y"], 1)
    assert ids == [["p"], ["p"]]
    (search_thread, search_omp), = seen
    (encode_thread, encode_omp), = encoded_on
    assert search_omp == 1 and encode_omp == main_threads and search_thread != encode_thread
    assert faiss.omp_get_max_threads() == main_threads


def test_rrf_fuse_hand_computed():
    from dashclip.serving.search import rrf_fuse

    ids, scores = rrf_fuse(["a", "b", "c"], ["c", "d"])
    # c: 1/63 + 1/61; a: 1/61; b and d: 1/62 each, b first (the vector list wins a tie of equal best ranks)
    assert ids == ["c", "a", "b", "d"]
    assert scores == pytest.approx([1 / 63 + 1 / 61, 1 / 61, 1 / 62, 1 / 62])
    assert rrf_fuse([], []) == ([], [])


def test_the_evaluation_ranks_hybrid_as_search_does(shop, searcher):
    """`dashclip eval`'s hybrid system and `dashclip search --hybrid` give one ranking (one code path)."""
    from dashclip.evaluation.baselines import EmbeddingScorer, HybridScorer, bm25_scorer, model_query_encoder, rank
    from dashclip.models.embeddings import load_embeddings

    emb = load_embeddings(shop.root / "index-embeddings")
    products = shop.catalog.products            # every indexed product (the eval ranks those with an image)
    assert sorted(products["id"]) == sorted(emb.ids.tolist())
    row = {pid: i for i, pid in enumerate(emb.ids.tolist())}
    ids = products["id"].tolist()
    vectors = np.asarray(emb.vectors["fused"])[[row[p] for p in ids]]
    vector = EmbeddingScorer("q", model_query_encoder(shop.model), vectors, ids)
    hybrid = HybridScorer("q + BM25", vector, bm25_scorer(shop.catalog, products))
    queries = ["green watch for men", "red shoes", "summer dress"]
    got = rank(hybrid, queries, k=10)
    want = [[h.id for h in searcher.search(q, k=10, hybrid=True)] for q in queries]
    assert got == want
