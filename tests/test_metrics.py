"""Ranking metrics on tiny hand-made rankings with answers worked out by hand."""
import math

import numpy as np
import pytest

from dashclip.evaluation.metrics import (aggregate, dcg, dedupe, ndcg_at_k, precision_at_k, query_metrics,
                                         recall_at_k, reciprocal_rank, tiebreak_order, top_k)


def test_ndcg_by_hand():
    # Ranked labels 1, 2, 0 -> DCG = 1/log2(2) + 3/log2(3) + 0 = 1 + 1.892789...
    # Catalog labels 2, 2, 1 -> ideal DCG = 3 + 3/log2(3) + 1/log2(4) = 3 + 1.892789 + 0.5
    expected = (1 + 3 / math.log2(3)) / (3 + 3 / math.log2(3) + 0.5)
    assert ndcg_at_k([1, 2, 0], [2, 2, 1], k=10) == pytest.approx(expected)
    assert expected == pytest.approx(2.8928 / 5.3928, abs=1e-4)  # = 0.5364


def test_ideal_dcg_uses_all_catalog_labels_not_only_retrieved():
    # One label-2 product retrieved at rank 1, but the catalog has 20 of them: ideal is 10 gains of 3.
    ideal = dcg([3] * 10)
    assert ndcg_at_k([2], [2] * 20, k=10) == pytest.approx(3 / ideal)


def test_perfect_ranking_scores_one_and_reversed_scores_less():
    labels = {10: 2, 11: 2, 12: 1, 13: 1}
    perfect = [10, 11, 12, 13, 99, 98]
    m = query_metrics(perfect, labels)
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["recall@100"] == 1.0 and m["mrr"] == 1.0 and m["p@10"] == pytest.approx(0.4)
    reversed_ = [99, 98, 13, 12, 11, 10]
    r = query_metrics(reversed_, labels)
    # Reversed: gains 0,0,1,1,3,3 at ranks 1..6.
    exp = (1 / math.log2(4) + 1 / math.log2(5) + 3 / math.log2(6) + 3 / math.log2(7)) / \
        (3 + 3 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5))
    assert r["ndcg@10"] == pytest.approx(exp)
    assert r["mrr"] == pytest.approx(1 / 5)
    assert r["recall@100"] == 1.0  # both label-2 products are in the top 100


def test_recall_denominator_is_capped_at_k():
    assert recall_at_k([2] * 100, n_highly=500, k=100) == 1.0
    assert recall_at_k([2, 0, 2], n_highly=4, k=100) == 0.5
    assert recall_at_k([2, 2], n_highly=3, k=1) == 1.0
    assert recall_at_k([0], n_highly=0) == 0.0


def test_mrr_counts_only_label_two_and_p10_counts_label_one():
    assert reciprocal_rank([1, 1, 2]) == pytest.approx(1 / 3)
    assert reciprocal_rank([1, 0]) == 0.0
    assert precision_at_k([1, 2, 0, 0, 1], 10) == pytest.approx(0.3)


def test_duplicates_are_removed_before_cutting():
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]
    m = query_metrics([5, 5, 5, 6], {5: 2, 6: 2})
    assert m["ndcg@10"] == pytest.approx(1.0)  # 5 counts once, then 6


def test_no_relevant_products_gives_zero_not_nan():
    m = query_metrics([1, 2, 3], {})
    assert m == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr": 0.0, "p@10": 0.0}


def test_top_k_orders_by_score_then_fixed_tiebreak():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.9, 0.0])
    order = top_k(scores, 3)
    # The three tied 0.9 rows come first, in the order of the fixed permutation.
    perm = tiebreak_order(6)
    tied = sorted([1, 3, 4], key=lambda i: perm[i])
    assert order.tolist() == tied
    assert top_k(scores, 3).tolist() == order.tolist()  # deterministic
    assert top_k(scores, 5)[3:].tolist() == [2, 0]


def test_top_k_ties_at_the_cut_use_the_tiebreak_not_catalog_order():
    scores = np.zeros(50)
    tiebreak = np.arange(50)[::-1].copy()  # reversed: the last row wins every tie
    assert top_k(scores, 3, tiebreak).tolist() == [49, 48, 47]


def test_top_k_matches_full_sort_on_random_scores():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(4, 200)).astype(np.float32)  # many ties
    perm = tiebreak_order(200)
    for row, got in zip(scores, top_k(scores, 30, perm)):
        assert got.tolist() == np.lexsort((perm, -row))[:30].tolist()


def test_top_k_matches_bm25_tie_rule():
    # dashclip.text.BM25 orders ties by the same seeded permutation, so BM25 via top_k ranks the same.
    pytest.importorskip("bm25s")
    from dashclip.text import BM25

    docs = ["red shirt", "red shirt", "blue shirt", "red shoes", "red shirt", "green hat"]
    bm = BM25(docs)
    ids, _ = bm.search("red shirt", 6)
    assert top_k(bm.scores("red shirt"), 6).tolist() == ids.tolist()


def test_aggregate_by_style():
    per = {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.0}, "q3": {"ndcg@10": 0.5}}
    out = aggregate(per, {"q1": "keyword", "q2": "intent", "q3": "keyword"})
    assert out["overall"]["ndcg@10"] == pytest.approx(0.5)
    assert out["per_style"]["keyword"] == {"n_queries": 2, "ndcg@10": 0.75}
    assert out["per_style"]["intent"]["ndcg@10"] == 0.0


def test_evaluate_rankings_scores_a_run_per_style_and_keeps_asked_metrics():
    from dashclip.evaluation.metrics import evaluate_rankings

    qrels = {"q1": {10: 2, 11: 1}, "q2": {20: 2}}
    run = {"q1": [10, 11, 5], "q2": [7, 20]}
    out = evaluate_rankings(run, qrels, {"q1": "keyword", "q2": "intent"}, metrics=("ndcg@10", "mrr"))
    assert out["n_queries"] == 2 and set(out["overall"]) == {"ndcg@10", "mrr"}
    assert out["per_style"]["keyword"] == {"n_queries": 1, "ndcg@10": pytest.approx(1.0), "mrr": 1.0}
    # q2: the one label-2 product at rank 2 -> DCG 3/log2(3), ideal 3.
    assert out["per_style"]["intent"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert out["overall"]["mrr"] == pytest.approx(0.75)
    assert evaluate_rankings({"q3": [1, 2]}, qrels)["overall"]["ndcg@10"] == 0.0  # unlabelled query: all 0


def test_judged_metrics_condense_the_list_and_recall_counts_the_whole_catalog():
    import math

    from dashclip.evaluation.metrics import evaluate_judged, judged_query_metrics

    grades = {"a": 2, "b": 1, "c": 0, "d": 2}
    # ungraded x, y are dropped from the condensed list: a, c, b remain in that order; d is not retrieved
    m = judged_query_metrics(["x", "a", "y", "c", "b"], grades)
    dcg = 3 / math.log2(2) + 0 / math.log2(3) + 1 / math.log2(4)
    ideal = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / ideal)
    assert m["recall@100"] == pytest.approx(0.5)         # a of {a, d}
    assert m["mrr"] == pytest.approx(1.0)                # first in the condensed list, though rank 2 overall
    # a grade-2 product beyond the top 100 is not retrieved, even though it is judged
    far = judged_query_metrics([f"u{i}" for i in range(100)] + ["a"], grades)
    assert far["recall@100"] == 0 and far["ndcg@10"] == 0 and far["mrr"] == 0
    # recall is averaged over queries with a grade-2 product only; a query missing from the run scores 0
    # recall and MRR over the queries with a grade-2 product, NDCG over those with a relevant one
    res = evaluate_judged({"q1": ["a", "d"], "q2": ["e"]},
                          {"q1": grades, "q2": {"e": 1}, "q3": {"f": 2}, "q4": {"g": 0}})
    assert res["n_queries"] == 4 and res["n_recall_queries"] == 2 and res["n_ndcg_queries"] == 3
    assert res["overall"]["recall@100"] == pytest.approx((1.0 + 0.0) / 2)
    assert res["overall"]["mrr"] == pytest.approx((1.0 + 0.0) / 2)
    assert res["overall"]["ndcg@10"] == pytest.approx((judged_query_metrics(["a", "d"], grades)["ndcg@10"] + 1.0) / 3)
