"""Which (query, product) pairs to grade: for each query the top K by BM25, the top K by the current
embeddings (when a model is given), products of the kind the query asks for (when the query pool
says what it asks for), and a few random products, deduplicated.

BM25 finds the pairs that share words; the embeddings find pairs that share meaning (and the model's
current mistakes, which are the most useful pairs to grade); a synthesized query's `reading`
(queries.py) names the categories and attribute values it was built to mean, so "chappals for my
dad" gets men's flip flops to grade even though no title says "chappals" ("reading" source), and
products of those categories that miss an attribute ("near": the grade-1 and hard grade-0 cases);
random products keep easy negatives in the mix so the labeler and Stage 2 see the whole grade range.
None of these sources is a grade: the labeler grades every pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..ranking import cosine_scores, tiebreak_order, top_k
from ..text import BM25
from .queries import reading_of

CANDIDATE_COLUMNS = ("qid", "query", "product_id", "source")


@dataclass
class DenseRetriever:
    """Nearest products by cosine: `encode_query(texts) -> [N, D]` against L2-normalised product vectors."""

    encode_query: Callable[[list[str]], np.ndarray]
    product_ids: np.ndarray
    vectors: np.ndarray  # [P, D] float32, L2-normalised, row i = product_ids[i]
    name: str = "embedding"

    def search(self, queries: list[str], k: int, batch_size: int = 256) -> list[np.ndarray]:
        """Top-k product ids per query, best first (exact; ties as the evaluation ranks: `ranking.top_k`)."""
        out = []
        tiebreak = tiebreak_order(len(self.product_ids))
        for i in range(0, len(queries), batch_size):
            q = np.asarray(self.encode_query(list(queries[i:i + batch_size])), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
            out += [self.product_ids[rows] for rows in top_k(cosine_scores(q, self.vectors), k, tiebreak)]
        return out

    @classmethod
    def from_dirs(cls, model_dir, embeddings_dir, kind: str = "fused") -> "DenseRetriever":
        """The current dashclip model's query encoder against its product embeddings (architecture §2, §3)."""
        import torch

        import dashclip
        from ..models.embeddings import load_embeddings

        model = dashclip.load(model_dir)
        emb = load_embeddings(embeddings_dir, kind=kind)

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


class ReadingSampler:
    """Products that fit a query's reading ({"category": [...], "related": [...], <column>: [...]}):
    `matching` are of a named category with every named attribute value; `near` are of a named or
    related category and miss one (or are related and match)."""

    def __init__(self, catalog):
        self.products = catalog.products
        self._masks: dict[tuple[str, str], np.ndarray] = {}

    def _mask(self, column: str, values) -> np.ndarray:
        out = np.zeros(len(self.products), dtype=bool)
        if column not in self.products.columns:
            return out
        for v in values:
            key = (column, str(v))
            if key not in self._masks:
                self._masks[key] = (self.products[column].astype(str) == str(v)).to_numpy()
            out |= self._masks[key]
        return out

    def masks(self, reading: dict) -> tuple[np.ndarray, np.ndarray]:
        in_cat = self._mask("category", reading.get("category", []))
        related = self._mask("category", reading.get("related", []))
        holds = np.ones(len(self.products), dtype=bool)
        for col, values in reading.items():
            if col not in ("category", "related") and values:
                holds &= self._mask(col, values)
        return in_cat & holds, (in_cat & ~holds) | (related & holds)

    def grades(self, reading: dict) -> np.ndarray:
        """What the reading says of every product: 2 fits, 1 nearly fits, 0 neither (int8, catalog order)."""
        fits, near = self.masks(reading)
        return np.where(fits, 2, np.where(near, 1, 0)).astype(np.int8)


def pick_candidates(catalog, queries: pd.DataFrame, k_bm25: int = 20, k_dense: int = 20, n_random: int = 5,
                    dense: DenseRetriever | None = None, bm25: BM25 | None = None, seed: int = 0,
                    progress: Callable[[int], None] | None = None, k_reading: int = 0,
                    k_near: int = 0) -> pd.DataFrame:
    """Candidate pairs for every query (DataFrame with qid, query, and optionally reading): columns qid,
    query, product_id, source.

    `k_reading` / `k_near`: products sampled from those that fit the query's reading / nearly fit it
    (ReadingSampler); queries without a reading get none. A pair found by several sources is kept once,
    under the first source (bm25, dense, reading, near, random)."""
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
    readings = queries["reading"].tolist() if "reading" in queries.columns and (k_reading or k_near) else None
    sampler = ReadingSampler(catalog) if readings is not None else None
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
        if sampler is not None:
            reading = reading_of(readings[i])
            if reading:
                fits, near = sampler.masks(reading)
                for mask, k, source in ((fits, k_reading, "reading"), (near, k_near, "near")):
                    pool = np.flatnonzero(mask)
                    if k > 0 and len(pool):
                        add(ids[rng.choice(pool, size=min(k, len(pool)), replace=False)], source)
        if n_random > 0:
            add(ids[rng.choice(len(ids), size=min(n_random, len(ids)), replace=False)], "random")
        if progress is not None:
            progress(1)
    df = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    df["product_id"] = df["product_id"].astype(ids.dtype)
    return df
