"""A pool of shopper-like queries for a catalog that has no search logs.

Each query is filled from one real product, so every attribute combination exists in the catalog
(no "purple formal sandals for boys" unless such a product is there). Templates mix the product
type (the catalog's `category`) with its colour, gender, usage and other attributes, plus title
fragments without the brand, in the styles shoppers type: lowercase, singular or plural,
"for him" / "for women" / "for kids" phrasing, and a few typos. Attribute roles are found by
column name (colour/color, gender/sex, usage/occasion), so any catalog works; a catalog with only
titles and categories still gets type and title-fragment queries.

Queries are deduplicated (case and spacing ignored), and any that equals an excluded query (e.g. a
held-out evaluation query) is dropped, so the pool cannot leak evaluation queries into training.
"""
from __future__ import annotations

import re
import string

import numpy as np
import pandas as pd

from ..text import stem_plural

ROLE_PATTERNS = {"colour": ("colour", "color"), "gender": ("gender", "sex"), "usage": ("usage", "occasion")}
# How shoppers say who a product is for; keys are lowercase catalog values.
GENDER_PHRASES = {
    "men": (["men", "mens", "men's", "male"], ["for men", "for him", "for my husband", "for boyfriend"]),
    "women": (["women", "womens", "women's", "ladies"], ["for women", "for her", "for my wife", "for ladies"]),
    "boys": (["boys", "kids", "boys'"], ["for boys", "for kids", "for my son"]),
    "girls": (["girls", "kids", "girls'"], ["for girls", "for kids", "for my daughter"]),
    "unisex": (["unisex"], ["for everyone", "unisex"]),
}
USAGE_PHRASES = {"formal": ["office", "formal", "work"], "sports": ["gym", "sports", "running"],
                 "ethnic": ["ethnic", "traditional"], "party": ["party", "evening"],
                 "casual": ["casual", "everyday"], "travel": ["travel"], "smart casual": ["smart casual"]}
# Usage words that read naturally after "for" ("shoes for the gym", not "shoes for casual").
FOR_USAGE = {"office": "office", "work": "work", "gym": "the gym", "running": "running", "party": "a party",
             "travel": "travel", "evening": "the evening", "sports": "sports"}
GENDER_WORDS = {w for words, _ in GENDER_PHRASES.values() for w in words} | {"kids", "unisex"}
# Query text -> the template that made it (kept in the output so the pool's mix can be inspected).
TEMPLATES = ("type", "colour type", "gender type", "type for gender", "colour type gender",
             "usage type", "type for usage", "usage type for gender", "attr type", "title fragment", "typo")


def attribute_roles(columns) -> dict[str, str]:
    """Role -> column name for the attribute columns whose names say what they are."""
    roles = {}
    for col in columns:
        low = col.lower()
        for role, pats in ROLE_PATTERNS.items():
            if role not in roles and any(p in low for p in pats):
                roles[role] = col
    return roles


def _clean(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    s = " ".join(str(v).split())
    return s.lower() if s and s.lower() not in ("na", "nan", "none", "null") else None


def _type_word(category: str, rng) -> str:
    """Catalog categories are often plural ("Tshirts"): shoppers type both forms."""
    words = category.split()
    if rng.random() < 0.5:
        words[-1] = stem_plural(words[-1])
    return " ".join(words)


def make_typo(text: str, rng) -> str | None:
    """One typo in one longer word: a dropped, doubled or swapped letter."""
    words = text.split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long_words:
        return None
    i = int(rng.choice(long_words))
    w = words[i]
    j = int(rng.integers(1, len(w) - 1))
    kind = rng.integers(3)
    if kind == 0:
        w = w[:j] + w[j + 1:]
    elif kind == 1:
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]
    words[i] = w
    return " ".join(words)


def title_fragment(title: str, rng) -> str | None:
    """2-4 consecutive title words after the first (the brand, in most catalogs)."""
    words = [w for w in re.sub(r"[^\w\s'-]", " ", title.lower()).split() if w not in string.punctuation]
    words = words[1:]
    if len(words) < 2:
        return None
    n = int(rng.integers(2, min(4, len(words)) + 1))
    start = int(rng.integers(0, len(words) - n + 1))
    frag = words[start:start + n]
    # A fragment needs a real word beyond gender words ("men v" is not a query).
    if not any(len(w) >= 3 and w.isalpha() and w not in GENDER_WORDS for w in frag):
        return None
    return " ".join(frag)


def _query_from(row: dict, roles: dict, others: list[str], template: str, rng) -> str | None:
    cat = _clean(row.get("category"))
    if cat is None and template != "title fragment":
        return None
    pick = lambda options: options[int(rng.integers(len(options)))]
    colour = _clean(row.get(roles["colour"])) if "colour" in roles else None
    gender = _clean(row.get(roles["gender"])) if "gender" in roles else None
    usage = _clean(row.get(roles["usage"])) if "usage" in roles else None
    g_words, g_phrases = GENDER_PHRASES.get(gender, ([gender], [f"for {gender}"])) if gender else (None, None)
    t = _type_word(cat, rng) if cat else None
    # Usage words already in the type ("formal shoes") would make "formal formal shoes".
    u_words = [u for u in USAGE_PHRASES.get(usage, [usage]) if t is None or u not in t] if usage else None
    usage = usage if u_words else None
    if template == "type":
        return t
    if template == "colour type":
        return f"{colour} {t}" if colour else None
    if template == "gender type":
        return f"{pick(g_words)} {t}" if gender else None
    if template == "type for gender":
        return f"{t} {pick(g_phrases)}" if gender else None
    if template == "colour type gender":
        return f"{colour} {t} {pick(g_words)}" if colour and gender else None
    if template == "usage type":
        return f"{pick(u_words)} {t}" if usage else None
    if template == "type for usage":
        u_for = [FOR_USAGE[u] for u in u_words if u in FOR_USAGE] if usage else []
        return f"{t} for {pick(u_for)}" if u_for else None
    if template == "usage type for gender":
        return f"{pick(u_words)} {t} {pick(g_phrases)}" if usage and gender else None
    if template == "attr type":
        vals = [v for v in (_clean(row.get(c)) for c in others) if v and v != cat]
        return f"{pick(vals)} {t}" if vals else None
    if template == "title fragment":
        return title_fragment(str(row.get("title") or ""), rng)
    raise ValueError(f"unknown template {template!r}")


def normalize(text: str) -> str:
    return " ".join(str(text).lower().split())


def letters_id(i: int, prefix: str = "syn-") -> str:
    """A qid without digits (syn-aaab): the held-out rule (qid number divisible by 3) is for the
    evaluation queries, and must not silently drop a third of a synthesized pool."""
    s = ""
    for _ in range(5):
        i, r = divmod(i, 26)
        s = string.ascii_lowercase[r] + s
    return prefix + s


def synthesize_queries(catalog, n: int = 1000, seed: int = 0, exclude=(), typo_rate: float = 0.05,
                       max_tries: int | None = None) -> pd.DataFrame:
    """`n` distinct queries (fewer if the catalog cannot give that many) as a DataFrame with columns
    qid, query, template, product_id (the product the query was filled from).

    `exclude`: query texts never to emit (compared case- and space-insensitively)."""
    products = catalog.products
    if len(products) == 0:
        raise ValueError(f"{catalog.root}: the catalog has no products")
    rng = np.random.default_rng(seed)
    roles = attribute_roles(catalog.attributes)
    others = [c for c in catalog.attributes if c not in roles.values()]
    templates = [t for t in TEMPLATES if t != "typo"]
    excluded = {normalize(q) for q in exclude}
    seen, rows = set(), []
    records = products.to_dict("records")
    tries, max_tries = 0, max_tries or 50 * n
    while len(rows) < n and tries < max_tries:
        tries += 1
        row = records[int(rng.integers(len(records)))]
        template = templates[int(rng.integers(len(templates)))]
        q = _query_from(row, roles, others, template, rng)
        if q and rng.random() < typo_rate:
            q, template = make_typo(q, rng) or q, "typo"
        if not q:
            continue
        key = normalize(q)
        if key in seen or key in excluded:
            continue
        seen.add(key)
        rows.append({"qid": letters_id(len(rows)), "query": key, "template": template,
                     "product_id": row["id"]})
    return pd.DataFrame(rows, columns=["qid", "query", "template", "product_id"])


def read_queries(path) -> pd.DataFrame:
    """A query file: JSONL with `query` (and `qid`), or CSV/TSV with a `query` column, or plain text
    (one query per line). Missing qids become q000001...; a blank query is an error naming the line."""
    from pathlib import Path

    from ..io import read_jsonl

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such query file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
        for i, r in enumerate(rows, 1):
            if not isinstance(r, dict) or not str(r.get("query") or "").strip():
                raise ValueError(f"{path}: line {i}: no 'query' field")
        df = pd.DataFrame(rows)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str)
        if "query" not in df.columns:
            raise ValueError(f"{path}: no 'query' column (columns: {', '.join(df.columns)})")
        blank = df["query"].isna() | (df["query"].str.strip() == "")
        if blank.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(blank.to_numpy())[0]) + 2}: empty 'query'")
    else:
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()]
        df = pd.DataFrame({"query": [l for l in lines if l]})
    if "qid" not in df.columns:
        df["qid"] = [f"q{i:06d}" for i in range(1, len(df) + 1)]
    df["qid"] = df["qid"].astype(str)
    if df["qid"].duplicated().any():
        raise ValueError(f"{path}: duplicate qid {df.loc[df['qid'].duplicated(), 'qid'].iloc[0]!r}")
    if df.empty:
        raise ValueError(f"{path}: no queries")
    return df
