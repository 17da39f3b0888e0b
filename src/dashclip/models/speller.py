"""Query spelling correction: "jaket" -> "jacket", "sweatshrt" -> "sweatshirt", before the query encoder.

A shopper's typo splits into word pieces the query encoder has never seen together ("ja ##ket"), and
no amount of synthesized typos in training covers every one. So the query side of a model carries a
word list: the words of its catalog and the words its training queries use (each seen in several
queries, so a synthesized typo never becomes a known word). Those are the words a typo is corrected to.

A correction that breaks a real word costs more than a typo left alone (the query encoder still reads
most typos), so a word is corrected only when nobody knows it and the correction is clear:
- a word known to the shop list, the tokenizer's whole words or a general English lexicon (the
  pyspellchecker package's English word list, `english_lexicon()`), or the plural of one, is never
  touched: "rice cooker" is not "rice cooper", "blender" is not "blended";
- nor is a short word (under 5 letters: "kada" is not "kama"), a token with a digit ("ps5", "2x4"), or a
  brand-like token typed with an inner capital ("MacBook", "KitchenAid", "LG");
- candidates are shop words within one edit (Damerau-Levenshtein) for words up to 8 letters, two for
  longer ones, and keep the word's first letter ("macbook" is not "facebook"; "tsone" may be "stone");
- the closest candidate wins only when it is the one candidate at that distance, or is at least
  `MARGIN` times as frequent in the shop list as the runner-up; otherwise the word stays as typed.

Lookups use a symmetric-delete index (SymSpell): every listed word is stored under the strings
that deleting up to two letters makes, so a query word only meets candidates that share one.
Saved in the model directory as `query_speller.json` (a file saved before these rules loads and
follows them).
"""
from __future__ import annotations

import functools
import gzip
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..text import query_key, stem_plural
from ..io import read_json

SPELLER_FILE = "query_speller.json"
FORMAT = 2            # 1 (no "format" key): saved before the lexicon rules, with min_length 4
MIN_LENGTH = 5        # shorter words are left as typed
MARGIN = 5.0          # the best candidate must be this many times as frequent as the runner-up


@functools.lru_cache(maxsize=1)
def english_lexicon() -> frozenset[str]:
    """The general English words (pyspellchecker's en.json.gz, ~160k words seen 50+ times in its
    corpus), loaded once per process (~0.3 s) on the first word no shop list knows."""
    from importlib.resources import files

    with gzip.open(files("spellchecker") / "resources" / "en.json.gz", "rt", encoding="utf-8") as f:
        return frozenset(w for w in json.load(f) if w.isalpha())


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
    return 1 if len(word) <= 8 else 2


def brand_like(token: str) -> bool:
    """Typed with a capital after its first letter: "MacBook", "iPhone", "LG"."""
    return any(c.isupper() for c in token[1:])


class QuerySpeller:
    """`correct(query) -> query` with misspelled words replaced (lowercased; other text kept).
    `lexicon`: the general English words that are never corrected (default `english_lexicon()`,
    loaded on first need)."""

    def __init__(self, words: dict[str, int], known: Iterable[str] = (), min_length: int = MIN_LENGTH,
                 lexicon: Iterable[str] | None = None, margin: float = MARGIN,
                 index: dict[str, list[str]] | None = None):
        self.words = {w: int(c) for w, c in words.items() if w.isalpha() and len(w) >= 2}
        self.known = set(self.words) | {w for w in known if w}
        self.min_length = min_length
        self.margin = margin
        self._lexicon = frozenset(lexicon) if lexicon is not None else None
        self._index: dict[str, list[str]] = {} if index is None else index
        if index is None:
            for w in self.words:
                for d in _deletes(w, max_edits(w)):
                    self._index.setdefault(d, []).append(w)

    @property
    def lexicon(self) -> frozenset[str]:
        if self._lexicon is None:
            self._lexicon = english_lexicon()
        return self._lexicon

    @classmethod
    def build(cls, texts: Iterable[str], query_texts: Iterable[str] = (), min_queries: int = 3,
              known: Iterable[str] = (), **options) -> "QuerySpeller":
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
        return cls(dict(counts), known, **options)

    def is_known(self, word: str) -> bool:
        """A word of the shop list, the tokenizer or English, or the plural of one ("chappals")."""
        stem = stem_plural(word)
        return (word in self.known or stem in self.known
                or word in self.lexicon or stem in self.lexicon)

    def suggest(self, word: str) -> str:
        """The shop word `word` was meant to be, or `word` itself when it is known or unsure."""
        if len(word) < self.min_length or not word.isalpha() or self.is_known(word):
            return word
        budget = max_edits(word)
        found: dict[str, int] = {}
        for d in _deletes(word, budget):
            for cand in self._index.get(d, ()):
                if cand not in found and (cand[0] == word[0] or cand[:2] == word[1::-1]):
                    found[cand] = edit_distance(word, cand)
        ranked = sorted((dist, -self.words[c], c) for c, dist in found.items() if dist <= budget)
        if not ranked:
            return word
        dist, neg_count, best = ranked[0]
        rivals = [-n for dd, n, _ in ranked[1:] if dd == dist]
        if rivals and -neg_count < self.margin * max(rivals):
            return word                     # two shop words as close and as common: unsure
        return best

    def correct(self, query: str) -> str:
        """Each whitespace-separated token: as typed (lowercased) when it has a digit or is brand-like,
        else its letter runs through `suggest` (punctuation kept)."""
        out = []
        for tok in re.split(r"(\s+)", str(query)):
            low = tok.lower()
            if not tok or tok.isspace() or any(c.isdigit() for c in tok) or brand_like(tok):
                out.append(low)
            else:
                out.append("".join(self.suggest(part) if part.isalpha() else part
                                   for part in re.split(r"([a-z]+)", low)))
        return "".join(out)

    # ---- persistence (inside a model directory)
    def save(self, path: str | Path, with_index: bool = False) -> None:
        """`with_index`: also the symmetric-delete index, so a load reads it instead of rebuilding it
        (0.24 s on the fashion words; an exported model, `dashclip export onnx`, saves it)."""
        data = {"format": FORMAT, "words": self.words, "min_length": self.min_length, "margin": self.margin}
        if with_index:
            data["index"] = self._index_data()
        Path(path).write_text(json.dumps(data) + "\n")

    def _index_data(self) -> dict:
        """The index, compact: its keys in one string, each key's words as positions in `words`."""
        words = sorted(self.words)
        pos = {w: i for i, w in enumerate(words)}
        keys = sorted(self._index)
        return {"words_hash": _words_hash(self.words), "keys": "\n".join(keys),
                "lists": [[pos[w] for w in self._index[k]] for k in keys]}

    @classmethod
    def load(cls, path: str | Path, known: Iterable[str] = ()) -> "QuerySpeller":
        """A saved speller; one saved before the lexicon rules (no "format") gets today's rules and
        minimum length (its min_length 4 was the old rule's). A saved index is read, not rebuilt, when
        it is of these words (else it is rebuilt)."""
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("words"), dict):
            raise ValueError(f"{path}: not a query speller (no 'words' object)")
        if data.get("format", 1) < 2:
            return cls(data["words"], known)
        words = {w: int(c) for w, c in data["words"].items() if w.isalpha() and len(w) >= 2}
        index = _read_index(data.get("index"), words, path)
        return cls(words, known, data.get("min_length", MIN_LENGTH), margin=data.get("margin", MARGIN), index=index)


def _words_hash(words: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(sorted(words.items())).encode()).hexdigest()[:16]


def _read_index(saved, words: dict, path: Path) -> dict[str, list[str]] | None:
    """A saved index (see `QuerySpeller._index_data`), or None when there is none or it is of other words."""
    if saved is None:
        return None
    try:
        if saved["words_hash"] != _words_hash(words):
            return None                      # the words were edited after the index was saved: rebuild
        ordered = sorted(words)
        keys = saved["keys"].split("\n") if saved["keys"] else []
        if len(keys) != len(saved["lists"]):
            raise ValueError("keys and lists differ in length")
        return {k: [ordered[i] for i in lst] for k, lst in zip(keys, saved["lists"])}
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: field 'index' is malformed ({e}); delete it and the index is rebuilt") from None


def tokenizer_words(tokenizer) -> set[str]:
    """The whole words of a WordPiece tokenizer's vocabulary (English words it knows as one piece)."""
    vocab = getattr(tokenizer, "vocab", None) or tokenizer.get_vocab()
    return {t for t in vocab if t.isalpha() and not t.startswith("##") and len(t) >= 2}
