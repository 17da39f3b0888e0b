"""Which (query, product) pairs to grade: for each query the top K by BM25, the top K by the current
embeddings (when a model is given), and a few random products, deduplicated.

BM25 finds the pairs that share words; the embeddings find pairs that share meaning (and the model's
current mistakes, which are the most useful pairs to grade); random products keep easy negatives in
the mix so the labeler and Stage 2 see the whole grade range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..text import BM25

CANDIDATE_COLUMNS = ("qid", "query", "product_id", "source")


@dataclass
class DenseRetriever:
    """Nearest products by cosine: `encode_query(texts) -> [N, D]` against L2-normalised product vectors."""

    encode_query: Callable[[list[str]], np.ndarray]
    product_ids: np.ndarray
    vectors: np.ndarray  # [P, D] float32, L2-normalised, row i = product_ids[i]
    name: str = "embedding"

    def search(self, queries: list[str], k: int, batch_size: int = 256) -> list[np.ndarray]:
        """Top-k product ids per query, best first."""
        out = []
        k = min(k, len(self.product_ids))
        for i in range(0, len(queries), batch_size):
            q = np.asarray(self.encode_query(list(queries[i:i + batch_size])), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
            scores = q @ self.vectors.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, idx in zip(scores, top):
                out.append(self.product_ids[idx[np.argsort(-row[idx], kind="stable")]])
        return out

    @classmethod
    def from_dirs(cls, model_dir, embeddings_dir, kind: str = "fused") -> "DenseRetriever":
        """The current dashclip model's query encoder against its product embeddings (architecture §2, §3)."""
        import torch

        import dashclip
        from ..models.embeddings import load_embeddings

        model = dashclip.load(model_dir)
        emb = load_embeddings(embeddings_dir)
        if kind not in emb.vectors:
            raise ValueError(f"{embeddings_dir}: no {kind}.npy (have {', '.join(emb.vectors)})")

        def encode(texts):
            with torch.inference_mode():
                return model.encode_query(texts).float().cpu().numpy()

        return cls(encode, np.asarray(emb.ids), np.asarray(emb.vectors[kind], dtype=np.float32),
                   name=f"embedding:{kind}")

    @classmethod
    def from_sentence_encoder(cls, catalog, encoder=None, batch_size: int = 256) -> "DenseRetriever":
        """Off-the-shelf MiniLM over product_text: a dense source when no dashclip model exists yet."""
        from ..models.sentence import SentenceEncoder

        encoder = encoder or SentenceEncoder()
        vectors = encoder.encode(catalog.product_texts(), batch_size=batch_size)
        return cls(encoder.encode, catalog.products["id"].to_numpy(), vectors, name="minilm")


def pick_candidates(catalog, queries: pd.DataFrame, k_bm25: int = 20, k_dense: int = 20, n_random: int = 5,
                    dense: DenseRetriever | None = None, bm25: BM25 | None = None, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Candidate pairs for every query (DataFrame with qid, query): columns qid, query, product_id, source.

    A pair found by several sources is kept once, under the first source (bm25, dense, random)."""
    for col in ("qid", "query"):
        if col not in queries.columns:
            raise ValueError(f"queries: missing column {col!r}")
    ids = catalog.products["id"].to_numpy()
    if len(ids) == 0:
        raise ValueError(f"{catalog.root}: the catalog has no products")
    bm25 = bm25 if bm25 is not None or k_bm25 <= 0 else BM25(catalog.product_texts())
    texts = queries["query"].astype(str).tolist()
    dense_hits = dense.search(texts, k_dense) if dense is not None and k_dense > 0 else None
    rng = np.random.default_rng(seed)
    rows = []
    for i, (qid, query) in enumerate(zip(queries["qid"].astype(str), texts)):
        seen = set()

        def add(pids, source):
            for pid in pids:
                pid = pid.item() if hasattr(pid, "item") else pid
                if pid not in seen:
                    seen.add(pid)
                    rows.append((qid, query, pid, source))

        if bm25 is not None and k_bm25 > 0:
            idx, scores = bm25.search(query, k_bm25)
            add(ids[idx[scores > 0]], "bm25")  # a zero BM25 score is no evidence at all
        if dense_hits is not None:
            add(dense_hits[i], dense.name)
        if n_random > 0:
            add(ids[rng.choice(len(ids), size=min(n_random, len(ids)), replace=False)], "random")
        if progress is not None:
            progress(1)
    df = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    df["product_id"] = df["product_id"].astype(ids.dtype)
    return df
