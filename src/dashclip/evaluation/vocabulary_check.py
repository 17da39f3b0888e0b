"""Does a search system know the shop's words? Each word of the vocabulary, searched alone.

For every category word or phrase of a shop vocabulary ("chappals", "track pants", "kurti"), search it
alone and look at the top 10 products: the word *lands* when at least `need` (6) of them are of an aisle it
names (`Vocabulary.categories_called`: "sneakers" names Casual Shoes and Sports Shoes). The share of
words that land is the check; the same for each attribute role's words ("navy": baseColour Navy Blue;
"gents": gender Men or Unisex, the values that serve it), reported per role.

    vocabulary_check(encode_query, product_vectors, catalog, vocabulary) -> dict
    vocabulary_check_scorer(scorer, catalog, vocabulary) -> dict     (any `baselines` scorer: BM25 too)

Systems rank as everywhere else (`baselines.rank`, one tie rule), over the products with an image
(`baselines.retrieval_products`) unless `product_ids` says which rows `product_vectors` are.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..text import query_key
from ..labeling.vocabulary import Vocabulary
from .baselines import EmbeddingScorer, rank, retrieval_products

TOP = 10
NEED = 6


def vocabulary_words(vocabulary: Vocabulary, roles: Sequence[str] = ("category", "colour", "gender", "usage"),
                     catalog_attributes=()) -> list[dict]:
    """[{"role", "word", "column", "values"}]: each word of the vocabulary once per role, with the catalog
    column and the values it names (a category word: every category that lists it; an attribute word:
    every value that lists it, widened by "serves")."""
    out = []
    if "category" in roles:
        words = sorted({w for ws in vocabulary.category.values() for w in ws})
        out += [{"role": "category", "word": w, "column": "category", "values": vocabulary.categories_called(w)}
                for w in words]
    for role in roles:
        if role == "category" or role not in vocabulary.words:
            continue
        column = vocabulary.column(role, catalog_attributes)
        by_word: dict[str, list[str]] = {}
        for value, ws in vocabulary.words[role].items():
            for w in ws:
                by_word.setdefault(query_key(w), []).append(value)
        out += [{"role": role, "word": w, "column": column, "values": vocabulary.widen(role, sorted(vs))}
                for w, vs in sorted(by_word.items())]
    return out


def vocabulary_check_scorer(scorer, catalog, vocabulary: Vocabulary, roles=("category", "colour", "gender", "usage"),
                            top: int = TOP, need: int = NEED) -> dict:
    """{"system", "top", "need", "overall": {"n", "landed", "share"} (category words), "per_role": {role:
    {"n", "landed", "share"}}, "missed": {role: [words]}, "words": [{"role", "word", "in_aisle", "landed"}]}."""
    items = [w for w in vocabulary_words(vocabulary, roles, catalog.attributes)
             if w["column"] is not None and w["column"] in catalog.products.columns]
    column_of = catalog.products.set_index("id")
    ranked = rank(scorer, [w["word"] for w in items], k=top) if items else []
    words, per_role = [], {}
    for w, ids in zip(items, ranked):
        values = set(w["values"])
        col = column_of[w["column"]].reindex(ids).astype(str)
        in_aisle = int(col.isin(values).sum())
        landed = in_aisle >= need
        words.append({"role": w["role"], "word": w["word"], "values": w["values"], "in_aisle": in_aisle,
                      "landed": landed})
        r = per_role.setdefault(w["role"], {"n": 0, "landed": 0})
        r["n"] += 1
        r["landed"] += int(landed)
    for r in per_role.values():
        r["share"] = r["landed"] / r["n"] if r["n"] else 0.0
    return {"system": getattr(scorer, "name", "?"), "top": top, "need": need,
            "overall": per_role.get("category", {"n": 0, "landed": 0, "share": 0.0}), "per_role": per_role,
            "missed": {role: [x["word"] for x in words if x["role"] == role and not x["landed"]] for role in per_role},
            "words": words}


def vocabulary_check(encode_query: Callable[[list[str]], np.ndarray], product_vectors: np.ndarray, catalog,
                     vocabulary: Vocabulary, product_ids: Sequence | None = None, name: str = "encoder",
                     **kwargs) -> dict:
    """`vocabulary_check_scorer` for a query encoder (texts -> [Q, D], L2-normalised) against product
    vectors: rows of `product_ids`, by default `retrieval_products(catalog)` in catalog order."""
    if product_ids is None:
        product_ids = retrieval_products(catalog)["id"].tolist()
    return vocabulary_check_scorer(EmbeddingScorer(name, encode_query, product_vectors, product_ids), catalog,
                                   vocabulary, **kwargs)
