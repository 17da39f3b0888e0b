"""Keyword side of search: one tokenizer and one BM25, used by labeling candidates, hybrid search,
the BM25 baseline and the evaluation report, so that "BM25" means the same thing everywhere.

It follows the reference in ../shared/data/fashion-queries/README.md: bm25s (Lucene variant,
k1=1.5, b=0.75), lowercase [a-z0-9]+ tokens, NLTK's English stopwords removed, plural-only stemming.
"""
from __future__ import annotations

import re

import numpy as np

from .ranking import tiebreak_order, top_k

# NLTK's English stopword list (copied so that nltk and its data download are not needed).
STOPWORDS = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before being
below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down
during each few for from further had hadn hadn't has hasn hasn't have haven haven't having he he'd he'll
he's her here hers herself him himself his how i i'd i'll i'm i've if in into is isn isn't it it'd it'll
it's its itself just ll m ma me mightn mightn't more most mustn mustn't my myself needn needn't no nor not
now o of off on once only or other our ours ourselves out over own re s same shan shan't she she'd she'll
she's should should've shouldn shouldn't so some such t than that that'll the their theirs them themselves
then there these they they'd they'll they're they've this those through to too under until up ve very
was wasn wasn't we we'd we'll we're we've were weren weren't what when where which while who whom why will
with won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves
""".split())

_TOKEN = re.compile(r"[a-z0-9]+")


def stem_plural(tok: str) -> str:
    """Plural-only stemming: shirts -> shirt, watches -> watch, dresses -> dress, accessories -> accessory."""
    if len(tok) <= 3 or not tok.endswith("s") or tok.endswith("ss"):
        return tok
    if tok.endswith("ies") and len(tok) > 4:
        return tok[:-3] + "y"
    if tok.endswith(("ches", "shes", "sses", "xes", "zes")):
        return tok[:-2]
    if tok.endswith("us") or tok.endswith("is"):
        return tok
    return tok[:-1]


def query_key(text: str) -> str:
    """Queries are the same query when they differ only in case and spacing: the key that says so
    (held-out queries kept out of training, the query pool deduplicated, the speller's query words)."""
    return " ".join(str(text).lower().split())


def tokenize(text: str) -> list[str]:
    return [stem_plural(t) for t in _TOKEN.findall(str(text).lower()) if t not in STOPWORDS]


class BM25:
    """BM25 over a list of documents. `search` returns (row indices, scores), best first.

    Equal scores are ordered by a fixed random permutation of the rows (seeded: `ranking.top_k`'s
    rule), so ties never favour catalog order."""

    def __init__(self, docs: list[str], k1: float = 1.5, b: float = 0.75, seed: int = 0):
        import bm25s

        self.n = len(docs)
        self._bm25 = bm25s.BM25(method="lucene", k1=k1, b=b)
        self._bm25.index([tokenize(d) for d in docs], show_progress=False)
        self._tiebreak = tiebreak_order(self.n, seed)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for one query (float32, length n)."""
        toks = tokenize(query)
        if not toks:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(toks), dtype=np.float32)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows; `allowed` (a boolean mask over the rows) restricts them, e.g. to attribute filters."""
        s = self.scores(query)
        rows = np.arange(self.n) if allowed is None else np.flatnonzero(allowed)
        order = rows[top_k(s[rows], k, self._tiebreak[rows])]  # ties: the one rule (dashclip.ranking)
        return order, s[order]
