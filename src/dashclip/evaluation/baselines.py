"""Systems that score queries against products, for the evaluators: BM25, an off-the-shelf sentence
encoder (MiniLM), and a dashclip model (its query encoder, or its text tower, against product embeddings).

A *scorer* has `name`, `product_ids` (the columns) and `scores(queries) -> float32 [Q, N]`. The
evaluators rank every scorer with `metrics.top_k`, so BM25, MiniLM and the model share one ranking.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import atomic_path


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
        q = np.asarray(self.encode_queries(list(queries)), dtype=np.float32)
        return q @ self.product_vectors.T


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


def to_numpy(x) -> np.ndarray:
    """A Tensor (or array) as float32 numpy, detached."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


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
                  name: str = "dashclip") -> list[EmbeddingScorer]:
    """The model as two systems over its fused product embeddings: its query encoder (after Stage 2)
    and its text tower as the query encoder (the model before Stage 2)."""
    return [EmbeddingScorer(f"{name} text tower (before Stage 2)", model_query_encoder(model, "encode_text"),
                            product_vectors, product_ids),
            EmbeddingScorer(f"{name} query encoder", model_query_encoder(model, "encode_query"),
                            product_vectors, product_ids)]
