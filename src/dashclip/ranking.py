"""Ranking, in one place for search, evaluation and labeling: exact scores, the top k with one tie rule,
and reciprocal-rank fusion.

- `cosine_scores`: every product scored against every query (inner product of L2-normalised vectors),
  the exact ranking evaluation and labeling candidates use; search goes through an index instead.
- `top_k`: the k best, equal scores ordered by a fixed random permutation (`tiebreak_order`, seeded),
  so ties never favour catalog order and the same scores always give the same ranking. This rule
  defines the published metrics (evaluation/metrics.py); BM25, the baselines, the model and the
  labeling candidates all rank by it.
- `photo_vectors`: what a photo query is scored against (the product embedding mixed with the image's).
- `mix_photo_and_words`: a photo + words query as one vector, each side weighed in units of its spread.
- `expand_query`, `expand_exactly`: a query vector moved toward its first hits (average query expansion;
  photo queries).
- `rrf_fuse`: the hybrid ranking of `dashclip search --hybrid` and of the evaluation's hybrid system.
- `rerank_order`: a first-stage list with its head re-ordered by a re-ranker (search --rerank, and eval).
"""
from __future__ import annotations

from typing import Any

import numpy as np

RRF_K = 60                 # reciprocal-rank fusion constant (Cormack et al. 2009)
HYBRID_DEPTH = 100         # each list contributes its top max(k, HYBRID_DEPTH) to the fusion
RERANK_DEPTH = 20          # products of the first stage a cross-encoder re-ranks per query by default
SPREAD_SAMPLE = 256        # products on whose cosines mix_photo_and_words measures each side's spread
# Photo queries may be expanded with their first m hits (`expand_query`; serving.search does it through the
# index, the evaluations exactly). Off by default: it trades the product a photo shows for its kind. Measured
# (photo_search.md, photo_search_expansion.md, 2026-12-08): with m 3 fashion photos find their articleType
# better without a photo head (P@10 +0.03) and about as well with one, but grocery photos find their own
# product less often (fine top-1 0.596 -> 0.572 without a head; validation 0.709 -> 0.693 with one).
PHOTO_EXPANSION = 0


def cosine_scores(queries: np.ndarray, products: np.ndarray) -> np.ndarray:
    """[Q, N] float32 scores of every product for every query: inner products of (L2-normalised) vectors."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(products, dtype=np.float32).T


def photo_vectors(fused: np.ndarray, image: np.ndarray, image_weight: float) -> np.ndarray:
    """The product vectors a photo query is scored against: (1 - w) * fused + w * image, so a photo's
    score is (1 - w) cos(photo, product embedding) + w cos(photo, product image). The image term finds
    look-alikes (a fashion photo's own kind of article); the fused term ties the photo to the product
    it shows when catalog images differ from shoppers' photos (grocery shelves). Not re-normalised:
    the score stays that weighted sum of two cosines."""
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"photo image weight must be in [0, 1], got {image_weight}")
    return (1.0 - image_weight) * np.asarray(fused, dtype=np.float32) + \
        np.float32(image_weight) * np.asarray(image, dtype=np.float32)


def spread_sample_rows(n: int) -> np.ndarray:
    """The rows (of n products) whose embeddings `mix_photo_and_words` measures spreads on: seeded, so the
    service and the benchmark measure on the same products."""
    return np.sort(np.random.default_rng(0).choice(n, min(n, SPREAD_SAMPLE), replace=False))


def mix_photo_and_words(photos: np.ndarray, words: np.ndarray, products: np.ndarray,
                        text_weight: float) -> np.ndarray:
    """Photo + words queries as one unit vector each: (1 - w) * photo / s_photo + w * words / s_words,
    normalised, where s is the standard deviation of that side's cosines over `products` (a sample of
    product embeddings). A product's score is then the two sides' cosines mixed in units of how widely each
    tells products apart, so the weight means the same whatever the encoders: a photo head trained to land
    on its product spreads its cosines ~1.7x wider than the query encoder, and a plain sum of the two
    vectors let the photo drown the words ("in red": 0.51 of the top 10 in red, against 0.84 mixed so;
    photo_search.md). With fewer than 2 products there is no spread to measure, and the sides add as they are."""
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text weight must be in [0, 1], got {text_weight}")
    photos, words = np.asarray(photos, dtype=np.float32), np.asarray(words, dtype=np.float32)
    products = np.asarray(products, dtype=np.float32)

    def in_spread_units(v: np.ndarray) -> np.ndarray:
        if len(products) < 2:
            return v
        return v / np.maximum((v @ products.T).std(axis=1, keepdims=True), 1e-6)

    mixed = (1.0 - text_weight) * in_spread_units(photos) + text_weight * in_spread_units(words)
    return mixed / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)


def expand_query(queries: np.ndarray, hits: np.ndarray, scores: np.ndarray, query_weight: float = 1.0) -> np.ndarray:
    """Average query expansion (Chum et al. 2007, weighted as alpha-QE with alpha 1, Radenovic et al. 2018):
    each query [Q, D] plus the vectors of its first hits [Q, m, D] weighted by their scores [Q, m] (a
    negative or missing score, -inf, adds nothing), normalised. The hits' vectors are product embeddings,
    which sit among their own kind more tightly than a query lands (photo_search.md), so their weighted
    mean pulls a query off its stray neighbours toward the kind most of them are."""
    queries = np.asarray(queries, dtype=np.float32)
    hits, scores = np.asarray(hits, dtype=np.float32), np.asarray(scores, dtype=np.float32)
    weights = np.where(np.isfinite(scores), np.maximum(scores, 0.0), 0.0)
    out = np.float32(query_weight) * queries + np.einsum("qm,qmd->qd", weights, hits)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def expand_exactly(queries: np.ndarray, products: np.ndarray, m: int = PHOTO_EXPANSION,
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """`expand_query` with each query's first m hits found by exact scores over `products` [N, D] (what
    the served two searches do through an index); `exclude[i]`: a product row query i may not use
    (its own product, in an evaluation of catalog photos), -1 for none. m < 1: the queries as they are."""
    queries = np.asarray(queries, dtype=np.float32)
    if m < 1:
        return queries
    sims = cosine_scores(queries, products)
    if exclude is not None:
        own = np.asarray(exclude)
        sims[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
    m = min(m, sims.shape[1])
    first = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    return expand_query(queries, np.asarray(products, dtype=np.float32)[first],
                        np.take_along_axis(sims, first, 1))


def tiebreak_order(n: int, seed: int = 0) -> np.ndarray:
    """The fixed permutation that orders equal scores."""
    return np.random.default_rng(seed).permutation(n)


def top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best columns of `scores` ([N] or [Q, N]), best first.

    Equal scores are ordered by `tiebreak` (lower first; default: `tiebreak_order(N)`).
    Runs in O(N) per row plus a sort of the few candidates at or above the k-th score."""
    scores = np.asarray(scores)
    single = scores.ndim == 1
    scores = np.atleast_2d(scores)
    n = scores.shape[1]
    k = min(k, n)
    if tiebreak is None:
        tiebreak = tiebreak_order(n)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i, row in enumerate(scores):
        if 0 < k < n:
            kth = np.partition(row, n - k)[n - k]  # the k-th largest score
            cand = np.flatnonzero(row >= kth)    # every row tied with it too
        else:
            cand = np.arange(n)
        order = np.lexsort((tiebreak[cand], -row[cand]))[:k]
        out[i] = cand[order]
    return out[0] if single else out


def rrf_fuse(vector_ids: list, keyword_ids: list) -> tuple[list, list[float]]:
    """Reciprocal-rank fusion of a vector-search list and a BM25 list, each best first: (ids, scores),
    best first (scores: see serving/search.py's docstring). `--hybrid` search and the evaluation's
    hybrid system both fuse through here."""
    fused: dict[Any, list] = {}  # id -> [score, best rank, vector rank]
    for source, ranked in (("vector", vector_ids), ("bm25", keyword_ids)):
        for rank, pid in enumerate(ranked, 1):
            entry = fused.setdefault(pid, [0.0, rank, len(vector_ids) + 1])
            entry[0] += 1.0 / (RRF_K + rank)
            entry[1] = min(entry[1], rank)
            if source == "vector":
                entry[2] = rank
    # Ties (same fused score) go to the better single-list rank, then to the vector list.
    order = sorted(fused, key=lambda pid: (-fused[pid][0], fused[pid][1], fused[pid][2]))
    return order, [fused[pid][0] for pid in order]


def rerank_order(ids: list, head_scores) -> list:
    """The first-stage list `ids` (best first) with its head, the first len(head_scores) items, re-ordered by
    the re-ranker's scores (higher first; equal scores keep the first-stage order); the tail follows as it was."""
    n = len(head_scores)
    if n > len(ids):
        raise ValueError(f"{n} re-ranker scores for a list of {len(ids)}")
    head = sorted(range(n), key=lambda i: (-float(head_scores[i]), i))
    return [ids[i] for i in head] + list(ids[n:])
