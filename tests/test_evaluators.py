"""Evaluators on tiny fixtures with known answers (fake scorers, fake encoders, a 12-product catalog)."""
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashclip.data.catalog import Catalog
from dashclip.evaluation.baselines import BM25Scorer, EmbeddingScorer, cached_encode
from dashclip.evaluation.evaluators import (CategoryEvaluator, GroceryEvaluator, RelevanceEvaluator,
                                            RetrievalEvaluator, is_test_product, knn_predict, topk_hits)
from dashclip.evaluation.qrels import load_labels_module, load_queries, predicate_qrels, read_qrels_tsv
from dashclip.evaluation.metrics import query_metrics
from dashclip.settings import data_dir

DIM = 32
COLOURS = {"Red": (220, 30, 30), "Blue": (30, 30, 220), "Green": (30, 200, 30), "Black": (10, 10, 10)}


def words_vector(text: str) -> np.ndarray:
    """Bag of hashed words, L2-normalised: a fake text encoder that knows which words match."""
    v = np.zeros(DIM, np.float32)
    for w in str(text).lower().replace("|", " ").split():
        v[int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1
    return v / max(np.linalg.norm(v), 1e-9)


def image_vector(im) -> np.ndarray:
    """Mean colour, spread over the embedding: a fake image encoder."""
    rgb = np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0) / 255
    v = np.zeros(DIM, np.float32)
    v[:3] = rgb - 0.4
    return v / max(np.linalg.norm(v), 1e-9)


class FakeModel:
    """The model contract (encode_text / encode_image / encode_product / encode_query -> Tensor [N, D])."""
    model_id = "fake-0"

    def encode_text(self, texts):
        import torch
        return torch.tensor(np.stack([words_vector(t) for t in texts])) if texts else torch.zeros(0, DIM)

    def encode_query(self, texts):
        return self.encode_text(texts)

    def encode_image(self, images):
        import torch
        return torch.tensor(np.stack([image_vector(im) for im in images]))

    def encode_product(self, texts, images):
        import torch
        v = self.encode_text(texts) + self.encode_image(images)
        return torch.nn.functional.normalize(v, dim=-1)


class ArrayScorer:
    """A scorer with fixed scores per query text."""

    def __init__(self, name, product_ids, table):
        self.name, self.product_ids, self.table = name, list(product_ids), table

    def scores(self, queries):
        return np.stack([np.asarray(self.table[q], np.float32) for q in queries])


PRODUCTS = [  # id, title, category (articleType), subCategory, gender, baseColour, usage
    (1, "Red Formal Shirt", "Shirts", "Topwear", "Men", "Red", "Formal"),
    (2, "Blue Casual Shirt", "Shirts", "Topwear", "Men", "Blue", "Casual"),
    (3, "Red Women Shirt", "Shirts", "Topwear", "Women", "Red", "Formal"),
    (4, "Unisex Red Shirt", "Shirts", "Topwear", "Unisex", "Red", "Formal"),
    (5, "Black Formal Shoes", "Formal Shoes", "Shoes", "Men", "Black", "Formal"),
    (6, "Green Sports Shoes", "Sports Shoes", "Shoes", "Men", "Green", "Sports"),
    (7, "Blue Jeans", "Jeans", "Bottomwear", "Men", "Blue", "Casual"),
    (8, "Black Jeans", "Jeans", "Bottomwear", "Women", "Black", "Casual"),
    (9, "Red Tie", "Ties", "Accessories", "Men", "Red", "Formal"),
    (10, "Green Shirt Boys", "Shirts", "Topwear", "Boys", "Green", "Casual"),
    (11, "Blue Sports Shoes", "Sports Shoes", "Shoes", "Women", "Blue", "Sports"),
    (12, "Black Tie", "Ties", "Accessories", "Men", "Black", "Formal"),
]


def write_catalog(root: Path, products=PRODUCTS, photos_per_product: int = 0) -> Catalog:
    """A catalog dir as `dashclip catalog import` writes it, with one flat-colour image per product
    and optional in-store 'photos' (role extra, split test) of the same colour with a little noise."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, images = [], []
    rng = np.random.default_rng(0)
    for pid, title, cat, sub, gender, colour, usage in products:
        rel = f"images/{pid}.png"
        Image.new("RGB", (16, 16), COLOURS[colour]).save(root / rel)
        rows.append({"id": pid, "title": title, "text": "", "category": cat, "image": rel, "subCategory": sub,
                     "gender": gender, "baseColour": colour, "usage": usage, "season": None})
        images.append({"product_id": pid, "image": rel, "role": "primary", "split": None})
        for j in range(photos_per_product):
            arr = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
            prel = f"images/{pid}.x{j}.png"
            Image.fromarray(arr).save(root / prel)
            images.append({"product_id": pid, "image": prel, "role": "extra", "split": "test"})
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    pd.DataFrame(images).to_parquet(root / "images.parquet")
    attrs = ["subCategory", "gender", "baseColour", "usage", "season"]
    (root / "manifest.json").write_text(json.dumps({"attributes": attrs, "content_hash": "h0"}))
    return Catalog.open(root)


IDS = [p[0] for p in PRODUCTS]
LABELS = {"q1": {1: 2, 4: 2, 3: 1, 9: 1}, "q2": {6: 2, 11: 1}}
QUERIES = [{"qid": "q1", "query": "red formal shirt men", "style": "keyword"},
           {"qid": "q2", "query": "running shoes", "style": "synonym"}]


def label_scores(qrels, sign=1.0):
    return {q["query"]: [sign * qrels[q["qid"]].get(pid, 0) for pid in IDS] for q in QUERIES}


# --- retrieval -----------------------------------------------------------------------------------

def test_perfect_ranking_scores_one():
    m = RetrievalEvaluator(QUERIES, LABELS)(ArrayScorer("perfect", IDS, label_scores(LABELS)))
    assert m["overall"]["ndcg@10"] == pytest.approx(1.0)
    assert m["overall"]["recall@100"] == 1.0 and m["overall"]["mrr"] == 1.0
    assert m["per_style"]["keyword"]["n_queries"] == 1 and m["system"] == "perfect"


def test_reversed_ranking_matches_hand_computation():
    ev = RetrievalEvaluator(QUERIES, LABELS)
    m = ev(ArrayScorer("reversed", IDS, label_scores(LABELS, -1.0)))
    # Relevant products come last: the 12-product ranking ends with label 1s then label 2s.
    r1 = ev.rankings["q1"]
    assert [LABELS["q1"].get(p, 0) for p in r1][-4:] == [1, 1, 2, 2]
    assert m["overall"]["ndcg@10"] < 0.5
    expected = np.mean([query_metrics(ev.rankings[q], LABELS[q])["ndcg@10"] for q in ("q1", "q2")])
    assert m["overall"]["ndcg@10"] == pytest.approx(expected)
    assert m["overall"]["mrr"] == pytest.approx(np.mean([1 / 11, 1 / 12]))


def test_all_tied_scores_give_a_fixed_ranking_not_catalog_order():
    table = {q["query"]: [0.0] * len(IDS) for q in QUERIES}
    ev = RetrievalEvaluator(QUERIES, LABELS)
    a = ev(ArrayScorer("flat", IDS, table))
    first = dict(ev.rankings)
    b = ev(ArrayScorer("flat", IDS, table))
    assert a == b and ev.rankings == first
    assert first["q1"] != IDS  # the seeded permutation, not the catalog order


def test_embedding_and_bm25_scorers_rank_the_matching_product_first(tmp_path):
    cat = write_catalog(tmp_path / "cat")
    titles = cat.products["title"].tolist()
    emb = EmbeddingScorer("fake", lambda q: np.stack([words_vector(t) for t in q]),
                          np.stack([words_vector(t) for t in titles]), IDS)
    bm25 = BM25Scorer("bm25", titles, IDS)
    for scorer in (emb, bm25):
        ev = RetrievalEvaluator([{"qid": "a", "query": "green sports shoes"}], {"a": {6: 2}})
        m = ev(scorer)
        assert ev.rankings["a"][0] == 6 and m["overall"]["mrr"] == 1.0


# --- labels ----------------------------------------------------------------------------------------

def test_read_qrels_tsv_and_errors_name_the_line(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("qid\tproduct_id\tlabel\nq1\t5\t2\nq1\t6\t0\nq2\t7\t1\n")
    assert read_qrels_tsv(p) == {"q1": {5: 2}, "q2": {7: 1}}
    p.write_text("qid\tproduct_id\tlabel\nq1\t5\t2\nq1\tabc\t1\n")
    with pytest.raises(ValueError, match=r"q.tsv:3: bad product_id"):
        read_qrels_tsv(p)
    p.write_text("qid\tproduct_id\tlabel\nq1\t5\t7\n")
    with pytest.raises(ValueError, match=r":2: label must be 0, 1 or 2"):
        read_qrels_tsv(p)


def test_load_queries_validates_and_filters_heldout(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"qid": "dev001", "query": "a"}\n{"qid": "dev003", "query": "b"}\n')
    assert [q["qid"] for q in load_queries(p, heldout_only=True)] == ["dev003"]
    p.write_text('{"qid": "dev001", "query": "a"}\n{"qid": "dev001", "query": "b"}\n')
    with pytest.raises(ValueError, match="q.jsonl:2: duplicate qid: qid 'dev001' repeats line 1"):
        load_queries(p)
    p.write_text('{"qid": "dev001"}\n')
    with pytest.raises(ValueError, match="field 'query'"):
        load_queries(p)


LABELS_PY = data_dir() / "fashion-queries" / "labels.py"


@pytest.mark.skipif(not LABELS_PY.is_file(), reason="shared fashion-queries data not present")
def test_predicate_labels_come_from_the_shared_labels_py(tmp_path):
    cat = write_catalog(tmp_path / "cat")
    module = load_labels_module(LABELS_PY)
    q = {"qid": "x1", "query": "red formal shirt men", "style": "keyword", "types": ["Shirts"],
         "gender": ["Men"], "colour": ["Red"], "related_types": ["Ties"]}
    got = predicate_qrels([q], cat.products, module)["x1"]
    # Men red shirt 2; Unisex red shirt 2 (Unisex serves Men); women/blue/boys shirts 1; red men's tie 1.
    assert got == {1: 2, 4: 2, 2: 1, 3: 1, 10: 1, 9: 1}
    with pytest.raises(ValueError, match="not found in catalog column"):
        predicate_qrels([{**q, "colour": ["Navy"]}], cat.products, module)
    # A real catalog value this small sample lacks is no typo: the query just has nothing relevant here.
    assert predicate_qrels([{**q, "types": ["Sarees"], "related_types": []}], cat.products, module)["x1"] == {}


# --- relevance -----------------------------------------------------------------------------------

def test_relevance_auc_perfect_reversed_and_by_hand():
    ev = RelevanceEvaluator(QUERIES, LABELS)
    assert ev(ArrayScorer("p", IDS, label_scores(LABELS)))["mean_auc_2_vs_0"] == pytest.approx(1.0)
    assert ev(ArrayScorer("r", IDS, label_scores(LABELS, -1)))["mean_auc_1+_vs_0"] == pytest.approx(0.0)
    # One query, label-2 products 1 and 4: scores put product 4 below two label-0 products (of 8).
    scores = {"red formal shirt men": [9, 0, 5, 7, 8, 1, 1, 1, 5, 1, 1, 1]}
    m = RelevanceEvaluator(QUERIES[:1], LABELS)(ArrayScorer("h", IDS, scores))
    # 2 vs 0: positives 9 and 7 against zeros {0,8,1,1,1,1,1,1}: 9 beats 8, 7 beats 7 -> (8 + 7) / 16.
    assert m["mean_auc_2_vs_0"] == pytest.approx(15 / 16)


# --- aisle prediction ------------------------------------------------------------------------------

def test_knn_predict_known_answer():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    pred = knn_predict(train, np.array([0, 0, 1, 1]), np.array([[1, 0.05], [0.02, 1]], np.float32), k=2)
    assert pred.tolist() == [0, 1]


def test_product_split_is_deterministic_and_near_the_fraction():
    flags = [is_test_product(i, 0.2) for i in range(5000)]
    assert flags == [is_test_product(i, 0.2) for i in range(5000)]
    assert 0.17 < np.mean(flags) < 0.23


def test_category_probes_separate_clean_embeddings_and_not_noise():
    rng = np.random.default_rng(0)
    n, classes = 400, ["a", "b", "c", "d"]
    y = [classes[i % 4] for i in range(n)]
    centres = np.eye(4, 16, dtype=np.float32) * 3
    clean = centres[np.arange(n) % 4] + rng.normal(0, 0.3, (n, 16)).astype(np.float32)
    noise = rng.normal(0, 1, (n, 16)).astype(np.float32)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    emb = SimpleNamespace(ids=list(range(n)), vectors={"fused": norm(clean), "image": norm(noise)})
    ev = CategoryEvaluator(list(range(n)), {"category": y})
    m = ev(emb)
    fused, image = m["fused"]["category"], m["image"]["category"]
    assert fused["logreg"]["accuracy"] == 1.0 and fused["knn"]["macro_f1"] == 1.0
    assert image["knn"]["accuracy"] < 0.5 and image["logreg"]["accuracy"] < 0.5
    assert fused["n_test"] + fused["n_train"] == n and fused["n_classes"] == 4
    assert "text" not in m  # kinds the embeddings lack are skipped
    assert ("fused", "category", "logreg") in ev.predictions


def test_category_test_products_of_unseen_classes_are_counted_not_scored():
    ids = list(range(300))
    test_ids = [i for i in ids if is_test_product(i, 0.2)]
    y = ["a" if i % 2 else "b" for i in ids]
    y[test_ids[0]] = "only-in-test"
    x = np.eye(3, dtype=np.float32)[[0 if v == "a" else 1 if v == "b" else 2 for v in y]]
    m = CategoryEvaluator(ids, {"category": y}, kinds=("fused",))(
        SimpleNamespace(ids=ids, vectors={"fused": x}))
    assert m["fused"]["category"]["n_test_unseen_class"] == 1
    assert m["fused"]["category"]["knn"]["accuracy"] == 1.0


def test_category_knn_shares_neighbours_across_columns_and_equals_knn_per_column():
    """Columns with the same training products reuse one neighbour search; a column with other training
    products (a missing label) or fewer test products (an unseen class) still gets plain kNN's answer."""
    rng = np.random.default_rng(0)
    ids = list(range(400))
    x = rng.normal(size=(400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = {"a": [f"a{v}" for v in rng.integers(0, 5, 400)], "b": [f"b{v}" for v in rng.integers(0, 3, 400)]}
    labels["c"] = list(labels["a"])
    labels["c"][3] = None                                   # another training set
    test_ids = [i for i in ids if is_test_product(i, 0.2)]
    labels["b"][test_ids[0]] = "only-in-test"               # a smaller test set
    ev = CategoryEvaluator(ids, labels, kinds=("fused",))
    ev(SimpleNamespace(ids=ids, vectors={"fused": x}))
    is_test = np.array([is_test_product(i, 0.2) for i in ids])
    for column, values in labels.items():
        known = np.array([v is not None for v in values])
        train = known & ~is_test
        classes = sorted({v for v, t in zip(values, train) if t})
        y = np.array([classes.index(v) if v in classes else -1 for v in values])
        test = known & is_test & (y >= 0)
        want = knn_predict(x[train], y[train], x[test], 10, len(classes))
        y_true, got, _ = ev.predictions[("fused", column, "knn")]
        assert np.array_equal(got, want) and np.array_equal(y_true, y[test]), column


# --- grocery -----------------------------------------------------------------------------------------

def test_topk_hits_counts_distinct_labels():
    ranked = np.array([["a", "a", "b", "c"], ["b", "b", "b", "a"]])
    assert topk_hits(ranked, np.array(["b", "a"]), ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_grocery_transfer_with_a_fake_model(tmp_path):
    products = [p for p in PRODUCTS if p[0] in (1, 2, 6, 8)]  # four colours, four products
    cat = write_catalog(tmp_path / "groc", products, photos_per_product=3)
    m = GroceryEvaluator(cat)(FakeModel())
    assert m["n_photos"] == 12 and m["n_products"] == 4
    # Photos have their product's colour: the image embedding finds the product every time.
    assert m["image"]["fine_top1"] == 1.0 and m["image"]["coarse_top1"] == 1.0
    assert m["fused"]["fine_top5"] == 1.0  # only 4 products: top-5 holds them all
    with pytest.raises(ValueError, match="no in-store photos"):
        GroceryEvaluator(cat, split="val")
    # the photo index's mixes: w 0 ranks as the fused embedding, w 1 as the image embedding
    mixed = GroceryEvaluator(cat, photo_image_weights=(0.0, 1.0))(FakeModel())
    assert mixed["fused+image 0"] == mixed["fused"] and mixed["fused+image 1"] == mixed["image"]
    assert "fused+image 0.5" not in mixed
    # photo query expansion: every row again, expanded with its first m hits in that row's vectors
    expanded = GroceryEvaluator(cat, photo_image_weights=(1.0,), photo_expansions=(1,))(FakeModel())
    assert {"fused expanded 1", "image expanded 1", "fused+image 1 expanded 1"} <= set(expanded)
    assert expanded["image expanded 1"] == expanded["image"]   # the first hit is the product: nothing moves


# --- baseline cache --------------------------------------------------------------------------------

def test_cached_encode_reuses_disk_cache_keyed_by_encoder_and_texts(tmp_path):
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.ones((len(texts), 3), np.float32)

    a = cached_encode(encode, ["x", "y"], "enc-a", tmp_path)
    b = cached_encode(encode, ["x", "y"], "enc-a", tmp_path)
    assert calls == [2] and np.array_equal(a, b)
    cached_encode(encode, ["x", "z"], "enc-a", tmp_path)
    cached_encode(encode, ["x", "y"], "enc-b", tmp_path)
    assert calls == [2, 2, 2] and len(list(tmp_path.glob("*.npy"))) == 3


@pytest.mark.skipif(not LABELS_PY.is_file(), reason="shared fashion-queries data not present")
def test_fashion_qrels_from_the_dataset_catalog():
    from dashclip.evaluation.qrels import fashion_qrels

    q = {"qid": "x1", "query": "red formal shirt men", "style": "keyword", "types": ["Shirts"],
         "gender": ["Men"], "colour": ["Red"]}
    got = fashion_qrels([q])["x1"]
    assert got and set(got.values()) <= {1, 2} and all(isinstance(pid, int) for pid in got)


def test_grocery_split_catalog_keeps_iconic_images_and_one_split(tmp_path):
    from dashclip.evaluation.grocery import split_catalog

    cat = write_catalog(tmp_path / "groc", [p for p in PRODUCTS if p[0] in (1, 2)], photos_per_product=2)
    images = cat.images.copy()
    images.loc[images["image"].str.endswith(".x0.png"), "split"] = "train"
    cat.images = images
    train = split_catalog(cat, "train")
    assert sorted(train.images["role"].tolist()) == ["extra", "extra", "primary", "primary"]
    assert set(train.images.loc[train.images["role"] == "extra", "split"]) == {"train"}
    assert len(cat.images) == 6  # the original is left as it was
    with pytest.raises(ValueError, match="no in-store photos"):
        split_catalog(cat, "val")
