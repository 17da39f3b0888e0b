"""Re-ranking: a cross-encoder reads the query with each of the first stage's top products and orders them
by its expected grade (P(1) + 2 P(2)). The labeler that graded Stage 2's training pairs is such a cross-encoder
(`labeling/labelers/cross_encoder.py`), so a shop that trained one has a re-ranker for free: it sees query and
product words together, which a bi-encoder never does, at the price of one model call per (query, product).

Used by `dashclip search --rerank`, the service, and the evaluation (`evaluation.baselines.RerankScorer`);
the order rule is `dashclip.ranking.rerank_order`.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..ranking import RERANK_DEPTH, rerank_order

RERANKER_DIR = "reranker"   # a model dir's re-ranker (a cross-encoder labeler dir): search uses it by default


def model_reranker(model_dir: str | Path | None, reranker: str | Path | None = None,
                   depth: int | None = None) -> "CrossEncoderReranker | None":
    """The re-ranker a search over `model_dir` uses: `reranker` (a labeler dir) when given, else the model
    dir's own `reranker/` when it has one (with the depth recorded there), else None."""
    path = Path(reranker) if reranker else (Path(model_dir) / RERANKER_DIR if model_dir else None)
    if path is None or (not reranker and not path.is_dir()):
        return None
    if depth is None:
        recorded = path / "rerank.json"
        depth = int(json.loads(recorded.read_text()).get("depth", RERANK_DEPTH)) \
            if recorded.is_file() else RERANK_DEPTH
    return CrossEncoderReranker(path, depth)


class CrossEncoderReranker:
    """Re-orders the top `depth` products of each query by a cross-encoder labeler dir's expected grade."""

    def __init__(self, path: str | Path, depth: int = RERANK_DEPTH, device: str = "cpu", batch_size: int = 64):
        from .labelers.cross_encoder import CrossEncoderLabeler

        if int(depth) < 1:
            raise ValueError(f"re-ranking depth must be >= 1, got {depth!r}")
        self.path, self.depth = Path(path), int(depth)
        self.labeler = CrossEncoderLabeler(self.path, device=device, batch_size=batch_size)
        self._lock = threading.Lock()   # one tokenizer and model call at a time (threads share them)

    def expected_grades(self, catalog, queries: Sequence[str], product_ids: Sequence) -> np.ndarray:
        """[N] expected grade in [0, 2] of each (query, product id) pair, read as the labeler reads products."""
        from .labelers import pairs_from
        from .labelers.cross_encoder import labeler_text

        out = np.full(len(queries), -1.0, dtype=np.float32)   # -1: indexed but gone from the catalog (last)
        known = [i for i, pid in enumerate(product_ids) if _in_catalog(catalog, pid)]
        if not known:
            return out
        pairs = pairs_from(catalog, [queries[i] for i in known], [product_ids[i] for i in known])
        texts = [labeler_text(p, self.labeler.vocabulary) for p in pairs]
        with self._lock:
            probs = self.labeler.probabilities([p.query for p in pairs], texts)
        out[known] = probs[:, 1] + 2.0 * probs[:, 2]
        return out

    def rerank_batch(self, catalog, queries: Sequence[str], id_lists: Sequence[list]) -> list[tuple[list, list[float]]]:
        """For each query and its first-stage ids (best first): (ids with the top `depth` re-ordered, the
        expected grades of those top ids in their new order). One model pass for every pair of the batch."""
        heads = [list(ids[:self.depth]) for ids in id_lists]
        flat_q = [q for q, head in zip(queries, heads) for _ in head]
        flat_ids = [pid for head in heads for pid in head]
        grades = self.expected_grades(catalog, flat_q, flat_ids)
        out, start = [], 0
        for ids, head in zip(id_lists, heads):
            g = grades[start:start + len(head)]
            start += len(head)
            order = rerank_order(list(ids), g)
            by_id = dict(zip(head, g.tolist()))
            out.append((order, [by_id[pid] for pid in order[:len(head)]]))
        return out


def _in_catalog(catalog, pid) -> bool:
    try:
        return catalog.coerce_id(pid) in catalog.row_of
    except KeyError:
        return False
