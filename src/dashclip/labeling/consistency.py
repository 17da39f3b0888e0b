"""Keep the model grades that agree with what a synthesized query was built to mean.

A synthesized query carries its reading (queries.py): the categories and attribute values it asks
for. The labeler grades its candidates on its own; where the two disagree, one of them is wrong and
nothing says which, so the pair is left out of Stage 2 rather than taught either way. This is the
round-trip consistency filter of synthetic-query training (Promptagator, InPars): every grade that
reaches Stage 2 is still the labeler's, and a labeler's miss on a phrasing it does not know ("chappals")
costs a pair instead of teaching the query encoder that flip flops are irrelevant to chappals.

What a reading says of a product (`ReadingSampler.grades`): 2 when the product is of a named category
and has every named attribute value, 1 when it nearly fits (a named category missing a value, or a
related category), 0 otherwise. Grades of queries without a reading (search-log queries, seed grades)
pass unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .candidates import ReadingSampler
from .queries import reading_of

NO_READING = -1


def reading_grades(pairs: pd.DataFrame, pool: pd.DataFrame, catalog) -> np.ndarray:
    """For each (qid, product_id) row of `pairs`: what its query's reading in `pool` (qid, reading)
    says of the product (0/1/2), or NO_READING when the query has none or the product is unknown."""
    out = np.full(len(pairs), NO_READING, dtype=np.int8)
    if "reading" not in pool.columns or pairs.empty:
        return out
    readings = dict(zip(pool["qid"].astype(str), pool["reading"]))
    sampler = ReadingSampler(catalog)
    row_of = catalog.row_of
    def row(pid) -> int:
        try:
            return row_of.get(catalog.coerce_id(pid), -1)
        except KeyError:
            return -1

    product_rows = np.array([row(p) for p in pairs["product_id"]], dtype=np.int64)
    for qid, idx in pairs.groupby(pairs["qid"].astype(str)).indices.items():
        reading = reading_of(readings.get(qid))
        if not reading:
            continue
        rows = product_rows[idx]
        known = rows >= 0
        out[idx[known]] = sampler.grades(reading)[rows[known]]
    return out


def keep_consistent(grades: pd.DataFrame, pool: pd.DataFrame, catalog) -> tuple[pd.DataFrame, dict]:
    """(the grades to train on, a report). A grade is kept when its query has no reading or the
    reading says the same grade. The report counts pairs, kept pairs and agreement per query style."""
    said = reading_grades(grades, pool, catalog)
    checked = said != NO_READING
    agree = grades["grade"].to_numpy() == said
    keep = ~checked | agree
    style_of = dict(zip(pool["qid"].astype(str), pool["style"])) if "style" in pool.columns else {}
    styles = grades["qid"].astype(str).map(style_of).fillna("-").to_numpy()
    report = {"pairs": int(len(grades)), "checked": int(checked.sum()), "kept": int(keep.sum()),
              "agreement": round(float(agree[checked].mean()), 4) if checked.any() else None, "per_style": {}}
    for style in sorted(set(styles[checked])):
        m = checked & (styles == style)
        report["per_style"][style] = {"pairs": int(m.sum()), "agreement": round(float(agree[m].mean()), 4),
                                      "kept_grade2": int((agree & m & (said == 2)).sum())}
    return grades[keep].reset_index(drop=True), report


def reading_examples(catalog, vocabulary, n: int, seed: int = 0, exclude=(), k_bm25: int = 2, k_reading: int = 6,
                     k_near: int = 2, n_random: int = 1, bm25=None) -> pd.DataFrame:
    """Training pairs for the labeler whose grades come from the queries themselves: `n` synthesized
    queries (qids "reading-..."), their candidates picked as the pool's are, each graded by what its
    reading says. They teach the labeler the vocabulary's words ("keep my neck warm" -> mufflers),
    which a few human-graded queries cannot; the seed grades still teach it everything else.
    Columns: qid, query, product_id, grade, style. `exclude`: queries never to emit (held-out ones,
    and the pool the labeler will grade, so it is not graded on its own lessons). `bm25`: the catalog's
    BM25 index when the caller has one (built here otherwise)."""
    from ..text import BM25
    from .candidates import pick_candidates
    from .queries import synthesize_queries

    if n <= 0:
        return pd.DataFrame({"qid": [], "query": [], "product_id": [], "grade": np.zeros(0, np.int64), "style": []})
    queries = synthesize_queries(catalog, n=n, seed=seed, exclude=list(exclude), vocabulary=vocabulary)
    queries["qid"] = "reading-" + queries["qid"].astype(str)
    pairs = pick_candidates(catalog, queries, bm25=bm25 or BM25(catalog.product_texts()), k_bm25=k_bm25, k_dense=0,
                            k_reading=k_reading, k_near=k_near, n_random=n_random, seed=seed + 1)
    pairs["grade"] = reading_grades(pairs, queries, catalog)
    pairs = pairs[pairs["grade"] != NO_READING]
    style = dict(zip(queries["qid"], queries["style"]))
    return pd.DataFrame({"qid": pairs["qid"].to_numpy(), "query": pairs["query"].to_numpy(),
                         "product_id": pairs["product_id"].to_numpy(), "grade": pairs["grade"].astype(np.int64),
                         "style": pairs["qid"].map(style).to_numpy()})
