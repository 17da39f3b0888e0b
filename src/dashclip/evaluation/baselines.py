"""Systems that score queries against products, for the evaluators: BM25, an off-the-shelf sentence
encoder (MiniLM), and a dashclip model (its query encoder, or its text tower, against product embeddings).

A *scorer* has `name`, `product_ids` (the columns) and `scores(queries) -> float32 [Q, N]`. Every
scorer is ranked by `rank` (`ranking.top_k`: one tie rule), so BM25, MiniLM and the model share one
ranking. `baseline_scorers` are the report's reference systems; `bm25_rankings` / `minilm_rankings`
give their rankings directly (the benchmark scripts use them), through the same scorers.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import atomic_path
from ..models.model import to_numpy
from ..ranking import HYBRID_DEPTH, cosine_scores, rrf_fuse, tiebreak_order, top_k
from .metrics import TOP


class EmbeddingScorer:
    """Cosine of encoded queries against fixed, L2-normalised product vectors."""

    def __init__(self, name: str, encode_queries: Callable[[list[str]], np.ndarray],
                 product_vectors: np.ndarray, product_ids: Sequence):
        if len(product_vectors) != len(product_ids):
            raise ValueError(f"{name}: {len(product_vectors)} product vectors for {len(product_ids)} ids")
        self.name, self.encode_queries = name, encode_queries
        self.product_vectors = np.asarray(product_vectors, dtype=np.float32)
        self.product_ids = list(product_ids)

    def scores(self, queries: list[str]) -> np.ndarray:
        return cosine_scores(self.encode_queries(list(queries)), self.product_vectors)


class BM25Scorer:
    """BM25 (dashclip.text.BM25, the project's one BM25) over one text per product."""

    def __init__(self, name: str, texts: Sequence[str], product_ids: Sequence):
        from ..text import BM25

        if len(texts) != len(product_ids):
            raise ValueError(f"{name}: {len(texts)} texts for {len(product_ids)} ids")
        self.name, self.product_ids = name, list(product_ids)
        self.bm25 = BM25(list(texts))

    def scores(self, queries: list[str]) -> np.ndarray:
        return np.stack([self.bm25.scores(q) for q in queries]) if queries else \
            np.zeros((0, len(self.product_ids)), np.float32)


class HybridScorer:
    """BM25 and a vector system fused by reciprocal rank, as `dashclip search --hybrid` ranks: each
    list's top `depth` (BM25: products sharing a word with the query), fused by `ranking.rrf_fuse`.
    Its scores only order the fused list (higher first; -1 for products in neither list), so it is
    a ranking-only system: the relevance (ROC-AUC) evaluation leaves it out."""

    ranking_only = True

    def __init__(self, name: str, vector: EmbeddingScorer, keyword: BM25Scorer, depth: int | None = None,
                 correct: Callable[[list[str]], list[str]] | None = None):
        if list(vector.product_ids) != list(keyword.product_ids):
            raise ValueError(f"{name}: the vector and BM25 systems rank different products")
        self.name, self.vector, self.keyword = name, vector, keyword
        self.product_ids = list(vector.product_ids)
        self.depth = depth or HYBRID_DEPTH
        self.correct = correct        # the model's spelling correction, which BM25 reads the query through

    def scores(self, queries: list[str]) -> np.ndarray:
        tiebreak = tiebreak_order(len(self.product_ids))
        vec = self.vector.scores(queries)
        kw = self.keyword.scores(self.correct(list(queries)) if self.correct is not None else queries)
        out = np.full(vec.shape, -1.0, dtype=np.float32)
        for j, (v_rows, k_rows) in enumerate(zip(top_k(vec, self.depth, tiebreak), top_k(kw, self.depth, tiebreak))):
            k_rows = [r for r in k_rows if kw[j, r] > 0]
            order, _ = rrf_fuse(list(v_rows), k_rows)
            out[j, order] = np.arange(len(order), 0, -1, dtype=np.float32)
        return out


class RerankScorer:
    """A first-stage scorer whose top `reranker.depth` products are re-ordered by a re-ranker
    (`labeling.rerank.CrossEncoderReranker`), as `dashclip search --rerank` orders them (one rule,
    `ranking.rerank_order`). The first stage's top TOP are kept below the re-ranked head, so recall at
    TOP is the first stage's. Ranking-only (its scores only order the list)."""

    ranking_only = True

    def __init__(self, name: str, first, reranker, catalog, batch: int = 256):
        self.name, self.first, self.reranker, self.catalog, self.batch = name, first, reranker, catalog, batch
        self.product_ids = list(first.product_ids)
        self._column = {pid: i for i, pid in enumerate(self.product_ids)}

    def scores(self, queries: list[str]) -> np.ndarray:
        tiebreak = tiebreak_order(len(self.product_ids))
        first = self.first.scores(queries)
        keep = max(TOP, self.reranker.depth)
        rows = top_k(first, keep, tiebreak)
        out = np.full(first.shape, -1.0, dtype=np.float32)
        for start in range(0, len(queries), self.batch):
            chunk = list(range(start, min(start + self.batch, len(queries))))
            ids = [[self.product_ids[r] for r in rows[j]] for j in chunk]
            for j, (order, _) in zip(chunk, self.reranker.rerank_batch(self.catalog, [queries[j] for j in chunk], ids)):
                out[j, [self._column[p] for p in order]] = np.arange(len(order), 0, -1, dtype=np.float32)
        return out


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def cached_encode(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], encoder_key: str,
                  cache_dir: str | Path | None) -> np.ndarray:
    """`encode(texts)`, cached on disk as <cache_dir>/<hash>.npy keyed by (encoder_key, texts).

    MiniLM over the 44k fashion titles takes minutes on 2 cores; the cache makes a second report
    instant. No cache_dir: always encode."""
    if cache_dir is None:
        return np.asarray(encode(list(texts)), dtype=np.float32)
    key = hashlib.sha256(f"{encoder_key}\n{texts_hash(texts)}".encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.npy"
    if path.exists():
        vectors = np.load(path)
        if len(vectors) == len(texts):
            return vectors
    vectors = np.asarray(encode(list(texts)), dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    return vectors


def sentence_scorer(name: str, texts: Sequence[str], product_ids: Sequence, encoder=None,
                    cache_dir: str | Path | None = None, progress=None) -> EmbeddingScorer:
    """Off-the-shelf sentence encoder (default all-MiniLM-L6-v2), queries vs `texts`, cosine.
    Product vectors are cached by (encoder path, max_length, texts)."""
    if encoder is None:
        from ..models.sentence import SentenceEncoder

        encoder = SentenceEncoder()
    key = f"{getattr(encoder, 'path', type(encoder).__name__)}|{getattr(encoder, 'max_length', '')}"
    vectors = cached_encode(lambda t: encoder.encode(t, progress=progress), texts, key, cache_dir)
    return EmbeddingScorer(name, lambda q: encoder.encode(q), vectors, product_ids)


def model_query_encoder(model, method: str = "encode_query", batch_size: int = 256) -> Callable:
    """texts -> float32 [N, D] with one of the model's text encoders (`encode_query`, `encode_text`)."""
    fn = getattr(model, method)

    def encode(texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            parts = [to_numpy(fn(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return encode


def model_scorers(model, product_vectors: np.ndarray, product_ids: Sequence,
                  name: str = "dashclip", bm25: BM25Scorer | None = None) -> list:
    """The model as systems over its fused product embeddings: its text tower as the query encoder
    (the model before Stage 2) and, when it has one, its Stage 2 query encoder; with `bm25` (over the
    same products), also the last of these fused with BM25 as `dashclip search --hybrid` does."""
    scorers = [EmbeddingScorer(f"{name} text tower (before Stage 2)", model_query_encoder(model, "encode_text"),
                               product_vectors, product_ids)]
    if getattr(model, "has_query_encoder", True):
        scorers.append(EmbeddingScorer(f"{name} query encoder", model_query_encoder(model, "encode_query"),
                                       product_vectors, product_ids))
    if bm25 is not None:
        scorers.append(HybridScorer(f"{scorers[-1].name} + BM25, RRF (search --hybrid)", scorers[-1], bm25,
                                    correct=getattr(model, "correct_queries", None)))
    return scorers


# ---------------------------------------------------------------------------------------------------
# Ranking and the reference systems


def rank(scorer, texts: Sequence[str], k: int = TOP, batch: int = 64) -> list[list]:
    """The top-k product ids of each query text, best first (ties: `ranking.top_k`'s fixed rule)."""
    ids = np.asarray(scorer.product_ids, dtype=object)
    tiebreak = tiebreak_order(len(ids))
    out = []
    for i in range(0, len(texts), batch):
        scores = scorer.scores(list(texts[i:i + batch]))
        out += [ids[rows].tolist() for rows in top_k(scores, k, tiebreak)]
    return out


def retrieval_products(catalog, embedding_ids: Sequence | None = None):
    """The products every system ranks: those with an image (the fashion-queries labels grade only
    those), and, when a model is evaluated, those with a product embedding. Catalog order."""
    products = catalog.products[catalog.products["image"].notna()]
    if embedding_ids is not None:
        products = products[products["id"].isin(set(np.asarray(embedding_ids).tolist()))]
    return products.reset_index(drop=True)


def bm25_scorer(catalog, products=None) -> BM25Scorer:
    """BM25 over `product_text` (title + category + attributes), the project's one product text."""
    from ..data.catalog import product_texts

    products = retrieval_products(catalog) if products is None else products
    texts = product_texts(products, catalog.attributes)
    return BM25Scorer("BM25 (title + attributes)", texts, products["id"].tolist())


def minilm_scorer(catalog, products=None, field: str = "title", cache_dir: str | Path | None = None,
                  encoder=None, progress=None) -> EmbeddingScorer:
    """The off-the-shelf MiniLM, query vs one product field (`title`, or `text`: `product_text`)."""
    from ..data.catalog import product_texts

    products = retrieval_products(catalog) if products is None else products
    if field == "title":
        texts = products["title"].astype(str).tolist()
    elif field == "text":
        texts = product_texts(products, catalog.attributes)
    else:
        raise ValueError(f"MiniLM baseline: field must be 'title' or 'text', not {field!r}")
    name = "MiniLM (query vs title)" if field == "title" else "MiniLM (query vs title + attributes)"
    return sentence_scorer(name, texts, products["id"].tolist(), encoder=encoder, cache_dir=cache_dir,
                           progress=progress)


def baseline_scorers(catalog, products=None, cache_dir: str | Path | None = None, encoder=None,
                     progress=None) -> list:
    """The report's reference systems: BM25 over `product_text` and MiniLM, query vs title."""
    return [bm25_scorer(catalog, products),
            minilm_scorer(catalog, products, "title", cache_dir, encoder, progress)]


def bm25_rankings(catalog, texts: Sequence[str], k: int = TOP) -> list[list]:
    """BM25's top-k product ids per query text, as ranked in `dashclip eval`."""
    return rank(bm25_scorer(catalog), texts, k)


def minilm_rankings(catalog, texts: Sequence[str], k: int = TOP, field: str = "title",
                    cache_dir: str | Path | None = None, encoder=None) -> list[list]:
    """MiniLM's top-k product ids per query text, as ranked in `dashclip eval`."""
    return rank(minilm_scorer(catalog, None, field, cache_dir, encoder), texts, k)


def model_rankings(model, product_vectors: np.ndarray, product_ids: Sequence, texts: Sequence[str],
                   k: int = TOP, method: str = "encode_query", catalog=None) -> list[list]:
    """A model's top-k product ids per query text (`method`: its `encode_query`, or `encode_text` for
    the model before Stage 2) against product vectors, ranked exactly as `dashclip eval` ranks it.
    With `catalog`, only `retrieval_products` (those with an image, as the labels) are ranked."""
    ids = list(product_ids)
    vectors = np.asarray(product_vectors, dtype=np.float32)
    if catalog is not None:
        keep = set(retrieval_products(catalog, ids)["id"].tolist())
        rows = [i for i, pid in enumerate(ids) if pid in keep]
        ids, vectors = [ids[i] for i in rows], vectors[rows]
    return rank(EmbeddingScorer(method, model_query_encoder(model, method), vectors, ids), texts, k)
