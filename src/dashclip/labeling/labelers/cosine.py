"""No-training baseline: cosine of off-the-shelf MiniLM (query vs product_text), cut into grades by
two thresholds fit on training seed pairs (the pair of cuts with the best quadratic-weighted kappa)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from . import Grade, Pair
from ..grades import GRADE_VALUES


class CosineLabeler:
    name = "minilm-cosine"

    def __init__(self, low: float, high: float, encoder=None):
        from ...models.sentence import SentenceEncoder

        self.low, self.high = float(low), float(high)
        self.encoder = encoder or SentenceEncoder()
        self.version = hashlib.sha256(f"{self.encoder.path}|{self.low:.4f}|{self.high:.4f}".encode()).hexdigest()[:12]

    def cosines(self, pairs: list[Pair]) -> np.ndarray:
        return cosines(self.encoder, [p.query for p in pairs], [p.product_text for p in pairs])

    def grade(self, pairs: list[Pair]) -> list[Grade]:
        s = self.cosines(pairs)
        out = []
        for v in s:
            g = 2 if v >= self.high else 1 if v >= self.low else 0
            # Confidence: how far the score is from the nearest cut, squashed into [0.5, 1].
            margin = min(abs(v - self.low), abs(v - self.high))
            out.append(Grade(g, float(0.5 + 0.5 * np.tanh(10 * margin))))
        return out

    @classmethod
    def fit(cls, pairs: list[Pair], grades, encoder=None) -> "CosineLabeler":
        from sklearn.metrics import cohen_kappa_score
        from ...models.sentence import SentenceEncoder

        encoder = encoder or SentenceEncoder()
        s = cosines(encoder, [p.query for p in pairs], [p.product_text for p in pairs])
        grades = np.asarray(grades)
        cuts = np.unique(np.quantile(s, np.linspace(0.02, 0.98, 49)))
        best = (-2.0, cuts[0], cuts[-1])
        for i, lo in enumerate(cuts):
            for hi in cuts[i:]:
                pred = np.where(s >= hi, 2, np.where(s >= lo, 1, 0))
                k = cohen_kappa_score(grades, pred, weights="quadratic", labels=list(GRADE_VALUES))
                if k > best[0]:
                    best = (k, lo, hi)
        return cls(best[1], best[2], encoder)

    def save(self, path) -> None:
        from ...io import write_json

        write_json(path, {"labeler": self.name, "low": self.low, "high": self.high, "encoder": self.encoder.path})

    @classmethod
    def load(cls, path, encoder=None) -> "CosineLabeler":
        meta = json.loads(Path(path).read_text())
        return cls(meta["low"], meta["high"], encoder)


def cosines(encoder, queries: list[str], texts: list[str]) -> np.ndarray:
    uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    ut, ti = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    q = encoder.encode(list(uq))
    t = encoder.encode(list(ut))
    return np.einsum("nd,nd->n", q[qi], t[ti])
