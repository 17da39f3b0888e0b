"""Ranking metrics, after ../shared/data/fashion-queries/README.md.

Definitions (exact, so that numbers compare with the README's reference table):

- a ranking is cut at the top 100 after removing duplicate product ids (first occurrence kept);
- NDCG@10: gain 2^label - 1, discount 1/log2(rank + 1); the ideal DCG comes from *all* of the
  query's labels over the whole catalog, not only from the retrieved products;
- Recall@K: label-2 products in the top K divided by min(number of label-2 products, K)
  (the README defines K = 100; the curve uses the same form at every K);
- MRR: 1/rank of the first label-2 product within the top 100 (0 if none);
- P@10: products with label >= 1 among the top 10, divided by 10;
- every metric is averaged over queries, and per query style.

Ties: `top_k` (dashclip.ranking, the one tie rule) orders equal scores by a fixed random permutation
of the candidates (seeded), so ties never favour catalog order and the same scores always give the
same ranking. Every system (BM25, MiniLM, the model) is ranked by `top_k`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..ranking import tiebreak_order, top_k  # noqa: F401  (the metrics' tie rule; also public here)

HIGHLY_RELEVANT = 2
TOP = 100  # rankings are cut here (README)


def dedupe(ids: Iterable) -> list:
    """Ids in order with repeats removed (first occurrence kept)."""
    seen, out = set(), []
    for pid in ids:
        if pid not in seen:
            seen.add(pid)
            out.append(pid)
    return out


def dcg(gains: Sequence[float]) -> float:
    """Sum of gain / log2(rank + 1), rank starting at 1."""
    g = np.asarray(gains, dtype=np.float64)
    return float((g / np.log2(np.arange(2, len(g) + 2))).sum())


def ndcg_at_k(ranked_labels: Sequence[int], all_labels: Iterable[int], k: int = 10) -> float:
    """NDCG@k with gain 2^label - 1; the ideal ranking is built from `all_labels`
    (every label > 0 of the query over the whole catalog). 0 when the query has no relevant product."""
    ideal = sorted((int(x) for x in all_labels if x > 0), reverse=True)[:k]
    idcg = dcg([2 ** x - 1 for x in ideal])
    if idcg == 0:
        return 0.0
    return dcg([2 ** int(x) - 1 for x in list(ranked_labels)[:k]]) / idcg


def recall_at_k(ranked_labels: Sequence[int], n_highly: int, k: int = TOP) -> float:
    """Label-2 products in the top k / min(n_highly, k); 0 when the query has no label-2 product."""
    denom = min(n_highly, k)
    if denom == 0:
        return 0.0
    return sum(1 for x in list(ranked_labels)[:k] if x >= HIGHLY_RELEVANT) / denom


def reciprocal_rank(ranked_labels: Sequence[int], k: int = TOP) -> float:
    for rank, x in enumerate(list(ranked_labels)[:k], 1):
        if x >= HIGHLY_RELEVANT:
            return 1.0 / rank
    return 0.0


def precision_at_k(ranked_labels: Sequence[int], k: int = 10) -> float:
    return sum(1 for x in list(ranked_labels)[:k] if x >= 1) / k


def query_metrics(ranked_ids: Sequence, labels: Mapping, recall_ks: Sequence[int] = ()) -> dict[str, float]:
    """All metrics of one query. `labels` maps product id -> label for every product with label > 0
    (absent ids are label 0); `ranked_ids` is the system's ranking, best first."""
    ranked = [labels.get(pid, 0) for pid in dedupe(ranked_ids)[:TOP]]
    n_highly = sum(1 for x in labels.values() if x >= HIGHLY_RELEVANT)
    out = {"ndcg@10": ndcg_at_k(ranked, labels.values(), 10),
           "recall@100": recall_at_k(ranked, n_highly, TOP),
           "mrr": reciprocal_rank(ranked, TOP),
           "p@10": precision_at_k(ranked, 10)}
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(ranked, n_highly, k)
    return out


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Average of each metric over queries."""
    if not per_query:
        return {}
    return {key: float(np.mean([m[key] for m in per_query])) for key in per_query[0]}


def aggregate(per_query: Mapping[str, dict[str, float]], groups: Mapping[str, str] | None = None) -> dict:
    """{"n_queries": n, "overall": means, "per_style": {group: {"n_queries", **means}}}.
    `groups` maps qid -> group (the query style)."""
    out = {"n_queries": len(per_query), "overall": mean_metrics(list(per_query.values()))}
    if groups:
        buckets: dict[str, list] = defaultdict(list)
        for qid, m in per_query.items():
            buckets[groups.get(qid, "?")].append(m)
        out["per_style"] = {g: {"n_queries": len(ms), **mean_metrics(ms)} for g, ms in sorted(buckets.items())}
    return out


def evaluate_rankings(rankings: Mapping[str, Sequence], qrels: Mapping[str, Mapping],
                      styles: Mapping[str, str] | None = None, metrics: Sequence[str] | None = None,
                      recall_ks: Sequence[int] = ()) -> dict:
    """Score a run: `rankings` maps qid -> product ids, best first (the batch contract's
    `product_ids`); `qrels` maps qid -> {product id: label > 0}. Returns `aggregate`'s dict
    ({"n_queries", "overall", "per_style"}), keeping only `metrics` when given.
    The one scoring path of `dashclip eval`, the evaluators and the benchmarks."""
    per_query = {}
    for qid, ranked in rankings.items():
        m = query_metrics(ranked, qrels.get(qid, {}), recall_ks)
        per_query[qid] = {k: v for k, v in m.items() if metrics is None or k in metrics}
    return aggregate(per_query, styles)


# ---------------------------------------------------------------------------------------------------
# Sparse judgments (a shop's human grades: a few graded products per query, most of them relevant):
# ../shared/data/homedepot-search/README.md. Grade 0 is a judgment here, not "unknown".


def judged_query_metrics(ranked_ids: Sequence, grades: Mapping, k: int = 10, top: int = TOP) -> dict[str, float]:
    """One query's metrics over sparse judgments. `grades` maps every graded product id -> 0/1/2.

    - ndcg@10 (judged): condensed-list NDCG (Sakai 2007): the top `top` of the ranking with the
      ungraded products dropped, order kept; DCG@k with gain 2^grade - 1 and discount 1/log2(rank + 1);
      the ideal DCG from all of the query's graded products; NaN (left out of the mean) for a query
      with no grade-1 or grade-2 product;
    - recall@100: grade-2 products in the top `top` (ungraded ones still take their places) / grade-2
      products of the query; NaN for a query without one (it is left out of the mean);
    - mrr (judged): 1 / rank of the first grade-2 product in the condensed list (0 if none); NaN for a
      query without a grade-2 product.
    With these means, off-the-shelf MiniLM on dev_grades.csv scores the README's 0.654 / 0.705 / 0.689."""
    ranked = dedupe(ranked_ids)[:top]
    condensed = [int(grades[pid]) for pid in ranked if pid in grades]
    n_highly = sum(1 for g in grades.values() if int(g) >= HIGHLY_RELEVANT)
    hits = sum(1 for pid in ranked if int(grades.get(pid, 0)) >= HIGHLY_RELEVANT)
    relevant = any(int(g) > 0 for g in grades.values())
    return {"ndcg@10": ndcg_at_k(condensed, [int(g) for g in grades.values()], k) if relevant else float("nan"),
            "recall@100": hits / n_highly if n_highly else float("nan"),
            "mrr": reciprocal_rank(condensed, top) if n_highly else float("nan")}


def evaluate_judged(rankings: Mapping[str, Sequence], grades: Mapping[str, Mapping]) -> dict:
    """Score a run (qid -> product ids, best first) against sparse judgments (qid -> {product id: grade}).
    A query missing from the run ranks nothing. NDCG@10 is the mean over queries with a relevant product,
    recall@100 and MRR over those with a grade-2 product. Returns {"n_queries", "n_recall_queries",
    "n_ndcg_queries", "overall"}."""
    per_query = {qid: judged_query_metrics(rankings.get(qid, []), g) for qid, g in grades.items()}
    overall, counts = {}, {}
    for key in ("ndcg@10", "recall@100", "mrr"):
        values = [m[key] for m in per_query.values() if not np.isnan(m[key])]
        overall[key], counts[key] = (float(np.mean(values)) if values else 0.0), len(values)
    return {"n_queries": len(per_query), "n_recall_queries": counts["recall@100"], "n_ndcg_queries": counts["ndcg@10"],
            "overall": overall}
