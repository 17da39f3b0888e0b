"""A shop's vocabulary: how shoppers name its product types, attribute values and needs.

A catalog says "Flip Flops | Men | Casual"; a shopper types "chappals for my dad". Without search logs
(or an LLM to write queries), the query synthesizer only knows the catalog's own words, and Stage 2
never sees a synonym or an intent. A vocabulary is the small piece of domain knowledge that fixes
that: a JSON file, written once per shop, that the synthesizer fills its templates from. It holds
no relevance labels; the labeler still grades every pair.

    {
      "name": "fashion",
      "roles": {"category": "category", "gender": "gender", "colour": "baseColour", "usage": "usage"},
      "category":   {"Flip Flops": ["flip flops", "slippers", "chappals"], ...},
      "attributes": {"gender": {"Men": {"words": ["mens"], "for": ["for him", "for my dad"]}},
                     "baseColour": {"Navy Blue": ["navy", "dark blue"]},
                     "usage": {"Sports": {"words": ["gym"], "for": ["for the gym"]}}},
      "adjectives": ["comfortable", "stylish", ...],          # words of longer queries
      "needs":      [{"say": ["gym wear", "workout clothes"], # a need and the categories that answer it
                      "category": ["Tshirts", "Track Pants"], "usage": ["Sports"], "related": ["Sports Shoes"]}]
    }

`roles` maps the synthesizer's roles to catalog columns ("category" is the catalog's aisle column).
Attribute values are either a list of words, or {"words": [...], "for": [...], "serves": [...]} with
"for ..." phrases; "serves" names the values a product with this value also answers (a Unisex product
answers a query for men: {"Unisex": {"serves": ["Men", "Women"]}}).
Built-in vocabularies live beside this file (`vocabularies/<name>.json`); a catalog imported from a
preset names its own (see `data/presets.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_json

BUILTIN_DIR = Path(__file__).with_name("vocabularies")
ROLES = ("category", "gender", "colour", "usage")


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _words(entry) -> tuple[list[str], list[str]]:
    """(words, "for" phrases) of one attribute value entry."""
    if isinstance(entry, list):
        return [str(w) for w in entry], []
    if isinstance(entry, dict):
        return [str(w) for w in entry.get("words", [])], [str(w) for w in entry.get("for", [])]
    raise ValueError(f"expected a list of words or {{'words': [...], 'for': [...]}}, got {type(entry).__name__}")


# Attribute columns whose names say their role (the vocabulary's `roles` can name any column instead).
ROLE_PATTERNS = {"colour": ("colour", "color"), "gender": ("gender", "sex"), "usage": ("usage", "occasion")}


def attribute_roles(columns) -> dict[str, str]:
    """Role -> column name for the attribute columns whose names say what they are."""
    roles = {}
    for col in columns:
        low = col.lower()
        for role, pats in ROLE_PATTERNS.items():
            if role not in roles and any(p in low for p in pats):
                roles[role] = col
    return roles


@dataclass
class Need:
    """A need or occasion ("gym wear"), the categories that answer it and the constraints it implies."""

    say: list[str]
    category: list[str]
    related: list[str] = field(default_factory=list)
    constraints: dict[str, list[str]] = field(default_factory=dict)   # role -> allowed values


@dataclass
class Vocabulary:
    name: str
    roles: dict[str, str] = field(default_factory=dict)               # role -> catalog column
    category: dict[str, list[str]] = field(default_factory=dict)      # category value -> shopper words
    words: dict[str, dict[str, list[str]]] = field(default_factory=dict)     # role -> value -> words
    phrases: dict[str, dict[str, list[str]]] = field(default_factory=dict)   # role -> value -> "for ..." phrases
    serves: dict[str, dict[str, list[str]]] = field(default_factory=dict)    # role -> value -> values it also answers
    adjectives: list[str] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    source: str = ""
    data: dict = field(default_factory=dict)                            # the JSON it was read from

    @classmethod
    def empty(cls) -> "Vocabulary":
        return cls(name="none")

    @property
    def is_empty(self) -> bool:
        return not (self.category or self.words or self.needs)

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> "Vocabulary":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a vocabulary is a JSON object")
        unknown = set(d) - {"name", "about", "roles", "category", "attributes", "adjectives", "needs"}
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
        roles = dict(d.get("roles") or {})
        bad = set(roles) - set(ROLES)
        if bad:
            raise ValueError(f"{source}: 'roles' has unknown role(s) {sorted(bad)} (roles: {', '.join(ROLES)})")
        column_role = {col: role for role, col in roles.items()}
        category = {}
        for value, ws in (d.get("category") or {}).items():
            if not isinstance(ws, list) or not all(isinstance(w, str) and w.strip() for w in ws):
                raise ValueError(f"{source}: category {value!r}: expected a list of non-empty strings")
            category[value] = [w.lower() for w in ws]
        words, phrases, serves = {}, {}, {}
        for column, values in (d.get("attributes") or {}).items():
            role = column_role.get(column, column)
            for value, entry in values.items():
                try:
                    w, p = _words(entry)
                except ValueError as e:
                    raise ValueError(f"{source}: attributes.{column}.{value}: {e}") from None
                words.setdefault(role, {})[value] = [x.lower() for x in w]
                phrases.setdefault(role, {})[value] = [x.lower() for x in p]
                if isinstance(entry, dict) and entry.get("serves"):
                    serves.setdefault(role, {})[value] = [str(x) for x in entry["serves"]]
        needs = []
        for i, n in enumerate(d.get("needs") or []):
            where = f"{source}: needs[{i}]"
            if not isinstance(n, dict) or not n.get("say") or not n.get("category"):
                raise ValueError(f"{where}: a need needs 'say' and 'category' lists")
            extra = set(n) - {"say", "category", "related"} - set(ROLES) - set(roles.values())
            if extra:
                raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
            constraints = {column_role.get(k, k): list(v) for k, v in n.items()
                           if k not in ("say", "category", "related") and v}
            needs.append(Need([s.lower() for s in n["say"]], list(n["category"]), list(n.get("related") or []),
                              constraints))
        return cls(name=str(d.get("name") or "vocabulary"), roles=roles, category=category, words=words,
                   phrases=phrases, serves=serves, adjectives=[w.lower() for w in d.get("adjectives") or []], needs=needs,
                   source=source, data=d)

    @classmethod
    def load(cls, name_or_path) -> "Vocabulary":
        """A built-in vocabulary by name ("fashion") or a JSON file."""
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            path = BUILTIN_DIR / f"{name_or_path}.json"
            if not path.exists():
                known = sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))
                raise ValueError(f"unknown vocabulary {name_or_path!r}; built in: {', '.join(known)}, "
                                 f"or give a JSON file")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such vocabulary file")
        data = read_json(path)
        return cls.from_dict(data, source=str(path))

    # ---- lookups
    def column(self, role: str, catalog_attributes=()) -> str | None:
        """The catalog column of a role: from `roles`, else found by the column's name."""
        if role in self.roles:
            return self.roles[role]
        if role == "category":
            return "category"
        return attribute_roles(catalog_attributes).get(role)

    def widen(self, role: str, values) -> list[str]:
        """`values` and every value that serves one of them (["Men"] -> ["Men", "Unisex"])."""
        values = list(values)
        extra = [v for v, served in self.serves.get(role, {}).items() if set(served) & set(values) and v not in values]
        return values + extra

    def categories_called(self, word: str) -> list[str]:
        """Every category a shopper word can mean ("sneakers": Casual Shoes and Sports Shoes)."""
        w = word.lower()
        return sorted(c for c, ws in self.category.items() if w in ws)

    def shopper_words(self, product: dict, attributes=()) -> str:
        """The shopper words for one product (its catalog row), for a labeler to read beside the
        product text: "called: sneakers, trainers | for men, for him | good for: gym wear, running gear".
        Only words the product text does not already say; the vocabulary lists the common ones first.
        "" when the vocabulary knows nothing of the product."""
        cat = product.get("category")
        said = _tokens(" ".join(str(product.get(k) or "") for k in ("title", "category")))
        new = lambda w: not _tokens(w) <= said       # adds a word to what is said
        parts = []
        called = [w for w in self.category.get(str(cat), []) if new(w)][:3] if cat is not None else []
        if called:
            parts.append("called: " + ", ".join(called))
        for role, n in (("gender", 1), ("colour", 1), ("usage", 1)):
            col = self.column(role, attributes)
            value = product.get(col) if col else None
            if value is None or (isinstance(value, float) and value != value):
                continue
            own = _tokens(str(value))
            shown = [w for w in self.phrases.get(role, {}).get(str(value), []) + self.words.get(role, {}).get(str(value), [])
                     if not _tokens(w) & own][:n]
            if shown:
                parts.append(", ".join(shown))
        needs = [n.say[0] for n in self.needs if str(cat) in n.category and self._fits(product, n, attributes)]
        if needs:
            parts.append("good for: " + ", ".join(needs[:3]))
        return " | ".join(parts)

    def _fits(self, product: dict, need: Need, attributes) -> bool:
        for role, values in need.constraints.items():
            col = self.column(role, attributes)
            if col is not None and product.get(col) is not None and str(product.get(col)) not in values:
                return False
        return True

    def to_dict(self) -> dict:
        """The JSON this vocabulary was read from (e.g. to save a copy beside a labeler)."""
        return dict(self.data)

    def check(self, catalog) -> list[str]:
        """What in this vocabulary the catalog does not have (names the key); empty when all is known."""
        problems = []
        products = catalog.products
        cat_values = set(products["category"].dropna().astype(str)) if "category" in products else set()
        for c in self.category:
            if c not in cat_values:
                problems.append(f"category {c!r} is not a category of the catalog")
        for role, values in self.words.items():
            col = self.column(role, catalog.attributes)
            if col is None or col not in products.columns:
                problems.append(f"attributes for role {role!r}: the catalog has no such column")
                continue
            known = set(products[col].dropna().astype(str))
            problems += [f"{col} value {v!r} is not in the catalog" for v in values if v not in known]
        for i, n in enumerate(self.needs):
            problems += [f"needs[{i}] category {c!r} is not a category of the catalog"
                         for c in n.category + n.related if c not in cat_values]
        return problems


def vocabulary_for(catalog, name_or_path=None) -> Vocabulary:
    """The vocabulary to synthesize queries with: the one asked for, else the one the catalog's preset
    names, else an empty one (the catalog's own words only)."""
    if name_or_path:
        return Vocabulary.load(name_or_path)
    preset = (catalog.manifest or {}).get("preset")
    if preset:
        from ..data.presets import PRESETS

        p = PRESETS.get(preset)
        if p is not None and p.vocabulary:
            return Vocabulary.load(p.vocabulary)
    return Vocabulary.empty()
