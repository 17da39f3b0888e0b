"""Query spelling correction: "jaket" -> "jacket", "sweatshrt" -> "sweatshirt", before the query encoder.

A shopper's typo splits into word pieces the query encoder has never seen together ("ja ##ket"), and
no amount of synthesized typos in training covers every one. So the query side of a model carries a
word list: the words of its catalog and the words its training queries use (each seen in several
queries, so a synthesized typo never becomes a known word). At query time every word that is neither
in that list nor a whole word of the tokenizer's vocabulary is replaced by the closest listed word
within a small edit distance (Damerau-Levenshtein: one edit for words up to 6 letters, two for
longer ones; ties go to the more frequent word). A word with no close match is left as it is.

Lookups use a symmetric-delete index (SymSpell): every listed word is stored under the strings
that deleting up to two letters makes, so a query word only meets candidates that share one.
Saved in the model directory as `query_speller.json`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..text import query_key, stem_plural

SPELLER_FILE = "query_speller.json"


def _deletes(word: str, n: int) -> set[str]:
    out, frontier = {word}, {word}
    for _ in range(n):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment: a swap of neighbours is one edit)."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def max_edits(word: str) -> int:
    return 1 if len(word) <= 6 else 2


class QuerySpeller:
    """`correct(query) -> query` with misspelled words replaced (lowercased; other text kept)."""

    def __init__(self, words: dict[str, int], known: Iterable[str] = (), min_length: int = 4):
        self.words = {w: int(c) for w, c in words.items() if w.isalpha() and len(w) >= 2}
        self.known = set(self.words) | {w for w in known if w}
        self.min_length = min_length
        self._index: dict[str, list[str]] = {}
        for w in self.words:
            for d in _deletes(w, max_edits(w)):
                self._index.setdefault(d, []).append(w)

    @classmethod
    def build(cls, texts: Iterable[str], query_texts: Iterable[str] = (), min_queries: int = 3,
              known: Iterable[str] = ()) -> "QuerySpeller":
        """From catalog `texts` (every word counts) and training `query_texts` (a word counts once it
        is in `min_queries` distinct queries). `known`: words never corrected and never suggested
        (e.g. the tokenizer's whole words)."""
        counts: Counter = Counter()
        for t in texts:
            counts.update(w for w in re.findall(r"[a-z]+", str(t).lower()))
        in_queries: Counter = Counter()
        for q in set(query_key(q) for q in query_texts):
            in_queries.update(set(re.findall(r"[a-z]+", q)))
        for w, n in in_queries.items():
            if n >= min_queries:
                counts[w] += n
        return cls(dict(counts), known)

    def suggest(self, word: str) -> str:
        """The listed word closest to `word` within its edit budget, or `word` itself."""
        if word in self.known or len(word) < self.min_length or not word.isalpha():
            return word
        if stem_plural(word) in self.known:      # a plural of a known word ("chappals") is no typo
            return word
        budget = max_edits(word)
        best, best_key = word, None
        seen = set()
        for d in _deletes(word, budget):
            for cand in self._index.get(d, ()):
                if cand in seen:
                    continue
                seen.add(cand)
                dist = edit_distance(word, cand)
                if dist <= budget:
                    key = (dist, -self.words[cand], cand)
                    if best_key is None or key < best_key:
                        best, best_key = cand, key
        return best

    def correct(self, query: str) -> str:
        return "".join(self.suggest(tok) if tok.isalpha() else tok
                       for tok in re.split(r"([a-z]+)", str(query).lower()))

    # ---- persistence (inside a model directory)
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words, "min_length": self.min_length}) + "\n")

    @classmethod
    def load(cls, path: str | Path, known: Iterable[str] = ()) -> "QuerySpeller":
        data = json.loads(Path(path).read_text())
        return cls(data["words"], known, data.get("min_length", 4))


def tokenizer_words(tokenizer) -> set[str]:
    """The whole words of a WordPiece tokenizer's vocabulary (English words it knows as one piece)."""
    vocab = getattr(tokenizer, "vocab", None) or tokenizer.get_vocab()
    return {t for t in vocab if t.isalpha() and not t.startswith("##") and len(t) >= 2}
