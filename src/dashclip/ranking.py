"""Ranking, in one place for search, evaluation and labeling: exact scores, the top k with one tie rule,
and reciprocal-rank fusion.

- `cosine_scores`: every product scored against every query (inner product of L2-normalised vectors),
  the exact ranking evaluation and labeling candidates use; search goes through an index instead.
- `top_k`: the k best, equal scores ordered by a fixed random permutation (`tiebreak_order`, seeded),
  so ties never favour catalog order and the same scores always give the same ranking. This rule
  defines the published metrics (evaluation/metrics.py); BM25, the baselines, the model and the
  labeling candidates all rank by it.
- `photo_vectors`: what a photo query is scored against (the product embedding mixed with the image's).
- `rrf_fuse`: the hybrid ranking of `dashclip search --hybrid` and of the evaluation's hybrid system.
- `rerank_order`: a first-stage list with its head re-ordered by a re-ranker (search --rerank, and eval).
"""
from __future__ import annotations

from typing import Any

import numpy as np

RRF_K = 60                 # reciprocal-rank fusion constant (Cormack et al. 2009)
HYBRID_DEPTH = 100         # each list contributes its top max(k, HYBRID_DEPTH) to the fusion
RERANK_DEPTH = 20          # products of the first stage a cross-encoder re-ranks per query by default


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
