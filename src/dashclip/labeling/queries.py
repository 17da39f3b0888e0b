"""A pool of shopper-like queries for a catalog that has no search logs.

Each query is filled from one real product, so every attribute combination exists in the catalog
(no "purple formal sandals for boys" unless such a product is there). Queries come in the styles
shoppers type (`STYLES`):

    keyword      catalog words: "navy formal shirt men", "sandals for women", title fragments
    synonym      the shop's other names for a type, colour or person: "chappals for my dad", "navy trainers"
    intent       a need or occasion, few words in common with the products: "gym wear for him"
    long         a longer description: "comfortable black leather formal shoes for my husband for the office"
    misspelling  a keyword or synonym query with a typo, a split or a joined word: "sunglases", "hand bag"

Synonyms, needs and shopper phrases come from the shop's vocabulary (`vocabulary.py`); without one
the pool holds only keyword, long and misspelling queries in the catalog's own words. Attribute roles
are found by the vocabulary's `roles` or by column name (colour/color, gender/sex, usage/occasion), so
any catalog works; a catalog with only titles and categories still gets type and title-fragment queries.

Every query carries its `reading`: the categories and attribute values it asks for (JSON, keyed by
catalog column: {"category": [...], "related": [...], "gender": [...], ...}). It is what the query was
built to mean, not a label: candidate picking uses it to put products of the right kind in front of
the labeler, and `dashclip labels check` keeps the model grades that agree with it (consistency.py).

Queries are deduplicated (case and spacing ignored), and any that equals an excluded query (e.g. a
held-out evaluation query) is dropped, so the pool cannot leak evaluation queries into training.
"""
from __future__ import annotations

import json
import re
import string

import numpy as np
import pandas as pd

from ..data.catalog import is_missing
from ..data.tables import csv_delimiter
from ..text import query_key, stem_plural
from .vocabulary import Vocabulary

# How shoppers say who a product is for; keys are lowercase catalog values. A vocabulary adds to these.
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
# Keyword templates (the template column of a keyword query; other styles prefix theirs: "synonym: ...").
TEMPLATES = ("type", "colour type", "gender type", "type for gender", "colour type gender",
             "usage type", "type for usage", "usage type for gender", "attr type", "title fragment", "typo")
STYLES = ("keyword", "synonym", "intent", "long", "misspelling")
# The default mix. Keyword queries are the easy part of search; shoppers' other phrasings are where an
# embedding model must learn something new, so they get most of the pool.
DEFAULT_MIX = {"keyword": 0.3, "synonym": 0.25, "intent": 0.2, "long": 0.1, "misspelling": 0.15}
LEAD_INS = ("", "", "", "a ", "looking for ", "i need ", "i want ", "best ", "show me ")


def _clean(v) -> str | None:
    if is_missing(v):
        return None
    s = " ".join(str(v).split())
    return s.lower() if s and s.lower() not in ("na", "nan", "none", "null") else None


def _raw(v) -> str | None:
    """The catalog value as it is spelled (for readings), or None when missing."""
    return None if _clean(v) is None else " ".join(str(v).split())


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


def make_misspelling(text: str, rng) -> str | None:
    """A shopper's misspelling: a typo (make_typo), two words run together ("flipflops"), one word
    split ("sun glasses"), or an inner vowel dropped ("tshrt"). None when nothing changed."""
    words = text.split()
    kinds = []
    if len(words) >= 2:
        kinds.append("join")
    if any(len(w) >= 7 and w.isalpha() for w in words):
        kinds.append("split")
    if any(len(w) >= 5 and re.search(r"(?<=.)[aeiou](?=.)", w) for w in words):
        kinds.append("vowel")
    kinds += ["typo", "typo"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "join":
        i = int(rng.integers(len(words) - 1))
        return " ".join(words[:i] + [words[i] + words[i + 1]] + words[i + 2:])
    if kind == "split":
        i = int(rng.choice([k for k, w in enumerate(words) if len(w) >= 7 and w.isalpha()]))
        j = int(rng.integers(3, len(words[i]) - 2))
        return " ".join(words[:i] + [words[i][:j], words[i][j:]] + words[i + 1:])
    if kind == "vowel":
        i = int(rng.choice([k for k, w in enumerate(words) if len(w) >= 5 and re.search(r"(?<=.)[aeiou](?=.)", w)]))
        w = words[i]
        spots = [m.start() for m in re.finditer(r"(?<=.)[aeiou](?=.)", w)]
        j = int(rng.choice(spots))
        return " ".join(words[:i] + [w[:j] + w[j + 1:]] + words[i + 1:])
    typo = make_typo(text, rng)
    return typo if typo != text else None    # swapping "ss" changes nothing


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


class QueryFiller:
    """Fills query templates from one product row, in one style, and says what the query asks for.

    Each `_part` returns (words, reading values) for one role: the words go into the query, the values
    (every catalog value those words can mean: "kids" is Boys and Girls) into its reading."""

    def __init__(self, catalog, vocabulary: Vocabulary):
        self.vocab = vocabulary
        attrs = catalog.attributes
        self.columns = {role: vocabulary.column(role, attrs) for role in ("gender", "colour", "usage")}
        self.columns = {r: c for r, c in self.columns.items() if c and c in catalog.products.columns}
        self.others = [c for c in attrs if c not in self.columns.values()]
        (self.own_words, self.own_phrases), (self.words, self.phrases) = self._lexicon(catalog)
        usage = self.columns.get("usage")
        self.common = catalog.products[usage].value_counts(normalize=True).to_dict() if usage else {}
        cats = catalog.products["category"].astype(str).where(catalog.products["category"].notna())
        self.by_category = {c: np.flatnonzero((cats == c).to_numpy()) for c in cats.dropna().unique()}

    def _lexicon(self, catalog):
        """role -> value -> words / "for" phrases, twice: the catalog's own (every value's name, and the
        built-in phrases for gender and usage: keyword style) and those with the vocabulary's on top."""
        own_words: dict[str, dict[str, list[str]]] = {}
        own_phrases: dict[str, dict[str, list[str]]] = {}
        words: dict[str, dict[str, list[str]]] = {}
        phrases: dict[str, dict[str, list[str]]] = {}
        for role, col in self.columns.items():
            for raw in catalog.products[col].dropna().astype(str).unique():
                low, value = _clean(raw), _raw(raw)
                if low is None:
                    continue
                w, p = [low], []
                if role == "gender" and low in GENDER_PHRASES:
                    w, p = list(GENDER_PHRASES[low][0]), list(GENDER_PHRASES[low][1])
                if role == "usage":
                    w = list(USAGE_PHRASES.get(low, [low]))
                    p = [f"for {FOR_USAGE[u]}" for u in w if u in FOR_USAGE]
                own_words.setdefault(role, {})[value], own_phrases.setdefault(role, {})[value] = list(w), list(p)
                w += [x for x in self.vocab.words.get(role, {}).get(raw, []) if x not in w]
                p += [x for x in self.vocab.phrases.get(role, {}).get(raw, []) if x not in p]
                words.setdefault(role, {})[value] = w
                phrases.setdefault(role, {})[value] = p
        return (own_words, own_phrases), (words, phrases)

    def meanings(self, role: str, text: str) -> list[str]:
        """Every value of `role` whose words or phrases include `text`."""
        return sorted(v for v in self.words.get(role, {})
                      if text in self.words[role][v] or text in self.phrases[role].get(v, []))

    def _part(self, row, role, kind, rng, own_words: bool = False):
        """(text, values) for the row's value of `role`: kind "word" ("mens") or "for" ("for him").
        `own_words`: only the catalog's and the built-in words (keyword style)."""
        col = self.columns.get(role)
        value = _raw(row.get(col)) if col else None
        if value is None:
            return None
        lexicon = ((self.own_words, self.own_phrases) if own_words else (self.words, self.phrases))[kind != "word"]
        options = lexicon.get(role, {}).get(value, [])
        if not options:
            return None
        if role == "usage" and self.common.get(value, 0) > 0.5 and rng.random() < 0.75:
            return None     # "casual" fits most of a catalog: shoppers rarely say it, and it narrows nothing
        text = options[int(rng.integers(len(options)))]
        return text, self.vocab.widen(role, self.meanings(role, text) or [value])

    def _type(self, row, rng, synonym: bool):
        cat = _raw(row.get("category"))
        if cat is None:
            return None
        if synonym:
            options = self.vocab.category.get(cat, [])
            if not options:
                return None
            word = options[int(rng.integers(len(options)))]
            return word, sorted(set(self.vocab.categories_called(word)) | {cat})
        return _type_word(cat.lower(), rng), [cat]

    def pick(self, style: str, records: list[dict], rng):
        """(row, need) to fill a query of `style` from. Keyword queries come from products drawn
        uniformly, as shoppers ask most for what the shop has most of; the other styles draw a category
        (intent: a need) uniformly first, so the shop's whole vocabulary reaches the pool, rare types
        and their shopper words included."""
        if style == "keyword" or not self.by_category:
            return records[int(rng.integers(len(records)))], None
        need = None
        if style == "intent" and self.vocab.needs:
            need = self.vocab.needs[int(rng.integers(len(self.vocab.needs)))]
            cats = [c for c in need.category if c in self.by_category]
            if not cats:
                return None, None
            rows = self.by_category[cats[int(rng.integers(len(cats)))]]
        else:
            cats = list(self.by_category)
            rows = self.by_category[cats[int(rng.integers(len(cats)))]]
        for _ in range(8):      # a product that meets the need's constraints, if the category has one
            row = records[int(rows[int(rng.integers(len(rows)))])]
            if need is None or self._meets(row, need.constraints):
                return row, need
        return None, None

    def fill(self, row: dict, style: str, rng, need=None) -> tuple[str, str, dict] | None:
        """(query, template, reading) or None when the row cannot make a query of this style.
        `need`: for intent queries, the need to say (default: one the row's product answers)."""
        if style in ("keyword", "synonym"):
            return self._keyword(row, rng, synonym=style == "synonym")
        if style == "long":
            return self._long(row, rng)
        if style == "intent":
            return self._intent(row, rng, need)
        if style == "misspelling":
            base = self._keyword(row, rng, synonym=bool(self.vocab.category) and rng.random() < 0.5)
            if base is None:
                return None
            typo = make_misspelling(base[0], rng)
            return (typo, "typo", base[2]) if typo and typo != base[0] else None
        raise ValueError(f"unknown query style {style!r}; styles: {', '.join(STYLES)}")

    def _keyword(self, row, rng, synonym: bool):
        templates = [t for t in TEMPLATES if t != "typo"]
        template = templates[int(rng.integers(len(templates)))]
        if template == "title fragment":
            if synonym:
                return None
            q = title_fragment(str(row.get("title") or ""), rng)
            cat = _raw(row.get("category"))
            return (q, template, {"category": [cat]} if cat else {}) if q else None
        t = self._type(row, rng, synonym)
        if t is None:
            return None
        own = not synonym
        reading = {"category": t[1]}
        parts = {"type": t[0]}
        for role in ("colour", "gender", "usage"):          # this order: the rng draws stay the same
            if role not in template:
                continue
            kind = "for" if f"for {role}" in template else "word"
            p = self._part(row, role, kind, rng, own)
            if p is None or (role == "usage" and p[0].split()[-1] in t[0]):    # "formal formal shoes"
                return None
            parts[role], reading[self.columns[role]] = p
        if template == "attr type":
            vals = [v for v in (_clean(row.get(c)) for c in self.others) if v and v != t[0]]
            if not vals:
                return None
            parts["attr"] = vals[int(rng.integers(len(vals)))]
        order = {"type": ["type"], "colour type": ["colour", "type"], "gender type": ["gender", "type"],
                 "type for gender": ["type", "gender"], "colour type gender": ["colour", "type", "gender"],
                 "usage type": ["usage", "type"], "type for usage": ["type", "usage"],
                 "usage type for gender": ["usage", "type", "gender"], "attr type": ["attr", "type"]}[template]
        q = " ".join(parts[k] for k in order)
        return q, (f"synonym: {template}" if synonym else template), reading

    def _long(self, row, rng):
        """[lead-in] [adjective] [colour] type [for whom] [for what], at least four words."""
        t = self._type(row, rng, synonym=bool(self.vocab.category) and rng.random() < 0.4)
        if t is None:
            return None
        reading, front, back = {"category": t[1]}, [], []
        if self.vocab.adjectives and rng.random() < 0.8:
            front.append(self.vocab.adjectives[int(rng.integers(len(self.vocab.adjectives)))])
        for role, kind, words in (("colour", "word", front), ("gender", "for", back), ("usage", "for", back)):
            if rng.random() < 0.7:
                p = self._part(row, role, kind, rng)
                if p is not None and p[0].split()[-1] not in t[0]:
                    words.append(p[0])
                    reading[self.columns[role]] = p[1]
        q = " ".join(front + [t[0]] + back)
        if len(q.split()) < 4:
            return None
        return LEAD_INS[int(rng.integers(len(LEAD_INS)))] + q, "long", reading

    def _intent(self, row, rng, need=None):
        """A need the row's product answers ("gym wear"), maybe for whom ("for him")."""
        if need is None:
            cat = _raw(row.get("category"))
            needs = [n for n in self.vocab.needs if cat in n.category and self._meets(row, n.constraints)]
            if not needs:
                return None
            need = needs[int(rng.integers(len(needs)))]
        say = need.say[int(rng.integers(len(need.say)))]
        reading = {"category": list(need.category)}
        if need.related:
            reading["related"] = list(need.related)
        for role, values in need.constraints.items():
            if role in self.columns:
                reading[self.columns[role]] = self.vocab.widen(role, values)
        if "gender" in self.columns and "gender" not in need.constraints and rng.random() < 0.6:
            p = self._part(row, "gender", "for", rng)
            if p is not None and self.columns["gender"] and not p[0].endswith("everyone"):
                say = f"{say} {p[0]}"
                reading[self.columns["gender"]] = p[1]
        return say, "intent", reading

    def _meets(self, row, constraints) -> bool:
        for role, values in constraints.items():
            col = self.columns.get(role)
            if col is not None and _raw(row.get(col)) not in values:
                return False
        return True


def letters_id(i: int, prefix: str = "syn-") -> str:
    """A qid without digits (syn-aaab): the held-out rule (qid number divisible by 3) is for the
    evaluation queries, and must not silently drop a third of a synthesized pool."""
    s = ""
    for _ in range(5):
        i, r = divmod(i, 26)
        s = string.ascii_lowercase[r] + s
    return prefix + s


def style_mix(vocabulary: Vocabulary, typo_rate: float | None = None, mix: dict | None = None) -> dict[str, float]:
    """The share of each style: `mix` (default DEFAULT_MIX), with `typo_rate` as the misspelling share
    when given; styles the vocabulary cannot make (synonym, intent without one) are left out."""
    mix = dict(mix or DEFAULT_MIX)
    unknown = set(mix) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown query style(s) {sorted(unknown)}; styles: {', '.join(STYLES)}")
    if not vocabulary.category:
        mix.pop("synonym", None)
    if not vocabulary.needs:
        mix.pop("intent", None)
    rest = sum(v for k, v in mix.items() if k != "misspelling")
    if typo_rate is not None:
        if not 0.0 <= typo_rate < 1.0:
            raise ValueError(f"typo_rate must be in [0, 1), got {typo_rate}")
        mix = {k: (v / rest * (1 - typo_rate) if k != "misspelling" else typo_rate) for k, v in mix.items()}
        mix.setdefault("misspelling", typo_rate)
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the style mix is empty")
    return {k: v / total for k, v in mix.items() if v > 0}


def synthesize_queries(catalog, n: int = 1000, seed: int = 0, exclude=(), typo_rate: float | None = None,
                       max_tries: int | None = None, vocabulary: Vocabulary | str | None = None,
                       mix: dict | None = None) -> pd.DataFrame:
    """`n` distinct queries (fewer if the catalog cannot give that many) as a DataFrame with columns
    qid, query, style, template, product_id (the product the query was filled from), reading (JSON).

    `vocabulary`: a Vocabulary, a built-in name or a JSON file (default: the one the catalog's preset
    names, else none). `mix`: style -> share (default DEFAULT_MIX); `typo_rate` sets the misspelling
    share. `exclude`: query texts never to emit (compared case- and space-insensitively)."""
    from .vocabulary import vocabulary_for

    products = catalog.products
    if len(products) == 0:
        raise ValueError(f"{catalog.root}: the catalog has no products")
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else vocabulary_for(catalog, vocabulary)
    filler = QueryFiller(catalog, vocab)
    shares = style_mix(vocab, typo_rate, mix)
    styles, weights = list(shares), np.array(list(shares.values()))
    # Each try draws its style from the mix with the same generator that fills the query, so dropping an
    # excluded query never changes the queries that follow it.
    made_of = {s: 0 for s in styles}
    rng = np.random.default_rng(seed)
    excluded = {query_key(q) for q in exclude}
    seen, rows = set(), []
    records = products.to_dict("records")
    tries, max_tries = 0, max_tries or 50 * n
    failures = {s: 0 for s in styles}
    while len(rows) < n and tries < max_tries and styles:
        tries += 1
        style = styles[int(rng.choice(len(styles), p=weights / weights.sum()))]
        row, need = filler.pick(style, records, rng)
        made = filler.fill(row, style, rng, need) if row is not None else None
        key = query_key(made[0]) if made else ""
        if not made or not key or key in seen or key in excluded:
            failures[style] += 1
            if failures[style] > 200 * (made_of[style] + 1):   # this catalog cannot make more of it
                i = styles.index(style)
                styles.pop(i)
                weights = np.delete(weights, i)
            continue
        query, template, reading = made
        seen.add(key)
        made_of[style] += 1
        rows.append({"qid": letters_id(len(rows)), "query": key, "style": style, "template": template,
                     "product_id": row["id"], "reading": json.dumps(reading, sort_keys=True)})
    return pd.DataFrame(rows, columns=["qid", "query", "style", "template", "product_id", "reading"])


def reading_of(value) -> dict:
    """A pool row's reading as a dict ({} when the pool has none, e.g. search-log queries)."""
    if is_missing(value) or value == "":
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def read_queries(path, unique_qids: bool = True) -> pd.DataFrame:
    """A query file: JSONL with `query` (and `qid`), or CSV/TSV/Parquet with a `query` column, or plain text
    (one query per line). Missing qids become q000001...; a blank query is an error naming the line, and so
    is a repeated qid unless `unique_qids` is False (a table of pairs or a log, read for its texts)."""
    from pathlib import Path

    from ..io import InputFileError, check_unique_qids, iter_jsonl

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such query file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        numbered = list(iter_jsonl(path))
        for i, r in numbered:
            if not isinstance(r, dict) or not str(r.get("query") or "").strip():
                raise InputFileError(f"{path}: line {i}: no 'query' field")
        rows = [r for _, r in numbered]
        df = pd.DataFrame(rows)
        line_numbers = [i for i, _ in numbered]
    elif suffix in (".csv", ".tsv", ".parquet"):
        df = (pd.read_parquet(path) if suffix == ".parquet"
              else pd.read_csv(path, sep=csv_delimiter(path), dtype=str))
        if "query" not in df.columns:
            raise ValueError(f"{path}: no 'query' column (columns: {', '.join(df.columns)})")
        line_numbers = list(range(1, len(df) + 1) if suffix == ".parquet" else range(2, len(df) + 2))  # CSV: header
        blank = df["query"].isna() | (df["query"].str.strip() == "")
        if blank.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(blank.to_numpy())[0]) + 2}: empty 'query'")
    else:
        try:
            lines = [l.strip() for l in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError as e:
            lineno = path.read_bytes()[:e.start].count(b"\n") + 1
            raise InputFileError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8") from None
        df = pd.DataFrame({"query": [l for l in lines if l]})
        line_numbers = [i for i, l in enumerate(lines, 1) if l]
    if "qid" not in df.columns:
        df["qid"] = [f"q{i:06d}" for i in range(1, len(df) + 1)]
    if unique_qids:
        check_unique_qids(zip(line_numbers, df["qid"].tolist()), path,
                          label="line" if suffix != ".parquet" else "row")
    df["qid"] = df["qid"].astype(str).str.strip()
    if df.empty:
        raise ValueError(f"{path}: no queries")
    return df
