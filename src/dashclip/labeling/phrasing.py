"""The phrases of a shop vocabulary, for measuring search on shopper phrasing the training never saw.

A vocabulary (`vocabulary.py`) is a list of *phrases* in *groups*: each category's shopper words, each
attribute value's words and "for ..." phrases, the adjectives, each need's "say" list. This module

- lists them (`vocabulary_phrases`) and compares texts by their *content tokens* (`content_tokens`:
  `text.tokenize`'s lowercase, plural-stemmed tokens without NLTK stop words, and without the words that
  only say who a product is for: men, ladies, my husband, ...);
- says whether a query can be built entirely from a set of phrases (`buildable`);
- removes phrases from a vocabulary (`remove_phrases`), e.g. those taken from evaluation queries;
- splits a vocabulary into a training half and a held-out half (`split_vocabulary`): per group, seeded by
  a hash of each phrase, so both halves keep every group of two or more phrases, and no phrase is on
  both sides;
- turns a synthesized query's reading into the fashion-queries predicate (`reading_to_predicate`), so
  its labels come from the dataset's own label rule (`evaluation.qrels.predicate_qrels`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re

from ..text import STOPWORDS, query_key, stem_plural
from .queries import FOR_USAGE, GENDER_PHRASES, GENDER_WORDS, USAGE_PHRASES
from .vocabulary import Vocabulary

_TOKEN = re.compile(r"[a-z0-9]+")
# Words that only say who a product is for ("for my grandpa"): the label rule reads them as gender, or not at all.
RECIPIENT_WORDS = frozenset({
    "men", "man", "mens", "male", "gents", "guy", "guys", "women", "woman", "womens", "ladies", "lady", "female",
    "boy", "boys", "girl", "girls", "kid", "kids", "unisex", "him", "her", "husband", "hubby", "wife", "boyfriend",
    "girlfriend", "dad", "father", "mum", "mom", "mother", "sister", "brother", "son", "daughter", "nephew",
    "niece", "grandpa", "grandma", "grandfather", "grandmother", "everyone"})
# Filler that carries no meaning in a phrase ("something to keep my pants up" = "to keep my pants up").
FILLER = frozenset({"something"})


def content_tokens(text: str) -> tuple[str, ...]:
    """Lowercase, plural-stemmed tokens of `text` without stop words, filler and recipient words."""
    out = []
    for t in _TOKEN.findall(str(text).lower()):
        if t in STOPWORDS or t in FILLER or t in RECIPIENT_WORDS:
            continue
        t = stem_plural(t)
        if t in RECIPIENT_WORDS or t in GENDER_WORDS:
            continue
        out.append(t)
    return tuple(out)


def phrase_tokens(text: str) -> tuple[str, ...]:
    """Lowercase, plural-stemmed tokens of `text` without stop words and filler, recipient words kept
    ("for my dad" -> ("dad",)): what `PhraseMatcher` compares, so a held-out "for my nephew" is phrasing too."""
    return tuple(stem_plural(t) for t in _TOKEN.findall(str(text).lower()) if t not in STOPWORDS and t not in FILLER)


def vocabulary_phrases(data: dict) -> list[dict]:
    """Every phrase of a vocabulary's JSON (`Vocabulary.data`) with its group and kind:
    {"phrase", "kind" (category, word, for, adjective, need), "group" (e.g. "category:Tshirts",
    "gender:Men:for", "adjectives", "need:3"), "label" (what the group means, for people)}."""
    out = []
    for cat, ws in (data.get("category") or {}).items():
        out += [{"phrase": w.lower(), "kind": "category", "group": f"category:{cat}", "label": cat} for w in ws]
    for column, values in (data.get("attributes") or {}).items():
        for value, entry in values.items():
            words = entry if isinstance(entry, list) else entry.get("words", [])
            fors = [] if isinstance(entry, list) else entry.get("for", [])
            out += [{"phrase": w.lower(), "kind": "word", "group": f"{column}:{value}:words", "label": value}
                    for w in words]
            out += [{"phrase": w.lower(), "kind": "for", "group": f"{column}:{value}:for", "label": value}
                    for w in fors]
    out += [{"phrase": w.lower(), "kind": "adjective", "group": "adjectives", "label": "adjectives"}
            for w in data.get("adjectives") or []]
    for i, n in enumerate(data.get("needs") or []):
        out += [{"phrase": s.lower(), "kind": "need", "group": f"need:{i}", "label": ", ".join(n["category"])}
                for s in n["say"]]
    return out


def own_phrases(catalog_values: dict[str, list[str]]) -> set[str]:
    """The catalog's own words, which every synthesized pool uses whatever its vocabulary (keyword style):
    each category and attribute value as spelled (lowercase; a plural category also singular), and the
    built-in gender and usage phrases of `labeling.queries`. `catalog_values`: column -> values."""
    out = set()
    for column, values in catalog_values.items():
        for v in values:
            low = " ".join(str(v).lower().split())
            out.add(low)
            words = low.split()
            if words:
                out.add(" ".join(words[:-1] + [stem_plural(words[-1])]))
    for words, fors in GENDER_PHRASES.values():
        out.update(words)
        out.update(fors)
    for words in USAGE_PHRASES.values():
        out.update(words)
    out.update(f"for {w}" for w in FOR_USAGE.values())
    return out


def buildable(query: str, phrases) -> bool:
    """Whether the query's content tokens split into the content tokens of `phrases` (in order, each
    phrase used any number of times); stop words and recipient words are free. A query with no content
    token is not buildable."""
    target = content_tokens(query)
    if not target:
        return False
    pieces = {content_tokens(p) for p in phrases}
    pieces.discard(())
    n = len(target)
    ok = [True] + [False] * n
    for i in range(n):
        if not ok[i]:
            continue
        for piece in pieces:
            if target[i:i + len(piece)] == piece:
                ok[i + len(piece)] = True
    return ok[n]


class PhraseMatcher:
    """Finds which of a set of phrases a text contains, by `phrase_tokens` (contiguous, in order); a phrase
    of stop words only ("for him") is never found."""

    def __init__(self, phrases):
        self.pieces: dict[tuple, list[str]] = {}
        for p in phrases:
            piece = phrase_tokens(p)
            if piece:
                self.pieces.setdefault(piece, []).append(p)
        self.longest = max((len(k) for k in self.pieces), default=0)

    def find(self, text: str) -> list[str]:
        target = phrase_tokens(text)
        found = set()
        for i in range(len(target)):
            for n in range(1, min(self.longest, len(target) - i) + 1):
                found.update(self.pieces.get(target[i:i + n], ()))
        return sorted(found)


def contains_phrase(query: str, phrases) -> list[str]:
    """The phrases whose `phrase_tokens` occur contiguously in the query's."""
    return PhraseMatcher(phrases).find(query)


def taken_from(phrase: str, query: str, own=()) -> bool:
    """Whether a vocabulary phrase was taken from a query: equal to it verbatim (case and spacing ignored),
    or, for a phrase of two or more content tokens, equal to it without stop words, filler and recipient
    words ("date night outfit" from "date night outfit for her"). One-word phrases count only verbatim,
    so a general synonym ("pants") stays unless it is a whole query ("sneakers"); the catalog's own
    words (`own`: "flip flops", from "women flip flops") are never taken."""
    p = content_tokens(phrase)
    if p in {content_tokens(o) for o in own}:
        return False
    if query_key(phrase) == query_key(query):
        return True
    return len(p) >= 2 and p == content_tokens(query)


def remove_phrases(data: dict, remove) -> dict:
    """A copy of a vocabulary's JSON without the phrases in `remove` (compared case-insensitively).
    A need left with nothing to say is dropped."""
    gone = {query_key(p) for p in remove}
    keep = lambda ws: [w for w in ws if query_key(w) not in gone]
    out = copy.deepcopy(data)
    out["category"] = {c: keep(ws) for c, ws in (data.get("category") or {}).items()}
    for column, values in (out.get("attributes") or {}).items():
        for value, entry in list(values.items()):
            if isinstance(entry, list):
                values[value] = keep(entry)
            else:
                entry["words"] = keep(entry.get("words", []))
                if "for" in entry:
                    entry["for"] = keep(entry["for"])
    out["adjectives"] = keep(data.get("adjectives") or [])
    needs = []
    for n in data.get("needs") or []:
        n = dict(n, say=keep(n["say"]))
        if n["say"]:
            needs.append(n)
    out["needs"] = needs
    return out


def _rank(phrase: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{query_key(phrase)}".encode()).hexdigest()


def split_sides(data: dict, seed: int = 0) -> dict[str, str]:
    """phrase -> "train" or "heldout". Groups are taken in a fixed order; within a group, phrases not yet
    placed are ordered by a seeded hash and fill the side that has fewer of the group's phrases (the
    training side first), so a group of n >= 2 phrases gets about n/2 on each side. A phrase in two
    groups ("kids": Boys and Girls) is placed once, by the first."""
    groups: dict[str, list[str]] = {}
    for p in vocabulary_phrases(data):
        groups.setdefault(p["group"], [])
        if p["phrase"] not in groups[p["group"]]:
            groups[p["group"]].append(p["phrase"])
    side: dict[str, str] = {}
    for g in sorted(groups):
        phrases = groups[g]
        counts = {"train": 0, "heldout": 0}
        for p in phrases:
            if query_key(p) in side:
                counts[side[query_key(p)]] += 1
        for p in sorted((p for p in phrases if query_key(p) not in side), key=lambda p: _rank(p, seed)):
            s = "train" if counts["train"] <= counts["heldout"] else "heldout"
            side[query_key(p)] = s
            counts[s] += 1
    return side


def split_vocabulary(vocab: Vocabulary, seed: int = 0) -> tuple[Vocabulary, Vocabulary]:
    """(train_vocab, heldout_vocab): the vocabulary's phrases split by `split_sides`, disjoint. Roles,
    "serves" and each need's categories and constraints stay on both sides; a need whose phrases all
    went to one side is left out of the other."""
    side = split_sides(vocab.data, seed)
    train_only = [p for p, s in side.items() if s == "heldout"]
    heldout_only = [p for p, s in side.items() if s == "train"]
    out = []
    for name, drop in (("train", train_only), ("heldout", heldout_only)):
        d = remove_phrases(vocab.data, drop)
        d["name"] = f"{vocab.name}-{name}-{seed}"
        d["about"] = f"the {name} half of {vocab.name} (phrasing.split_vocabulary, seed {seed})"
        out.append(Vocabulary.from_dict(d, source=f"{vocab.source}#{name}"))
    return out[0], out[1]


# Reading keys (catalog columns) -> fashion-queries predicate keys (labels.py).
READING_KEYS = {"category": "types", "related": "related_types", "gender": "gender", "baseColour": "colour",
                "usage": "usage", "season": "season"}


def reading_to_predicate(reading, qid: str, query: str, style: str) -> dict:
    """A synthesized query's reading ({"category": [...], "gender": [...], ...}, JSON or dict) as a
    fashion-queries query ({"types", "gender", "colour", "usage", "related_types"}), whose labels the
    dataset's labels.py gives. Keys other than those of READING_KEYS are errors."""
    r = json.loads(reading) if isinstance(reading, str) else dict(reading)
    unknown = set(r) - set(READING_KEYS)
    if unknown:
        raise ValueError(f"{qid}: reading key(s) {sorted(unknown)} have no fashion-queries predicate")
    q = {"qid": qid, "query": query, "style": style}
    for key, value in r.items():
        if value:
            q[READING_KEYS[key]] = sorted(set(value))
    if "types" not in q:
        raise ValueError(f"{qid}: a reading without a category cannot be labelled")
    q["related_types"] = [t for t in q.get("related_types", []) if t not in q["types"]]
    if not q["related_types"]:
        q.pop("related_types")
    return q


def predicate_to_reading(q: dict) -> dict:
    """The inverse of `reading_to_predicate`: a fashion-queries query's predicate as a reading."""
    back = {v: k for k, v in READING_KEYS.items()}
    return {back[k]: list(v) for k, v in q.items() if k in back and v}
