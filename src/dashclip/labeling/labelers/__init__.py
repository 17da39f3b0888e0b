"""The labeler interface: `grade(pairs) -> grades with confidence`, and a registry by name.

A labeler sees a query and a product (its row, and `product_text`, the one text form of a product).
It returns one `Grade` per pair, in order. A labeler that could not grade a pair (an LLM answered
garbage, a server kept failing) returns a Grade with `error` set and the raw answer, never a
made-up 0: the grading run records those apart from the grades.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

GRADE_NAMES = {0: "irrelevant", 1: "somewhat relevant", 2: "highly relevant"}


@dataclass
class Pair:
    query: str
    product_text: str                     # title | category | attribute values (data.catalog.product_text)
    product: dict = field(default_factory=dict)  # the catalog row: id, title, category, attributes


@dataclass
class Grade:
    grade: int | None                     # 0, 1, 2; None when `error` is set
    confidence: float = 1.0               # in [0, 1]
    error: str | None = None
    raw: str | None = None                # the labeler's raw answer, kept for failures

    @property
    def ok(self) -> bool:
        return self.error is None


class Labeler(Protocol):
    name: str      # e.g. "cross-encoder"
    version: str   # changes whenever the grades could change (weights, prompt, model)

    def grade(self, pairs: list[Pair]) -> list[Grade]: ...


# name -> factory(**options). Factories import their heavy modules lazily.
def _cross_encoder(path, **kw):
    from .cross_encoder import CrossEncoderLabeler

    return CrossEncoderLabeler(path, **kw)


def _llm(seed_examples=None, **kw):
    from .llm import LLMLabeler

    return LLMLabeler.from_env(examples=seed_examples, **kw)


def _cosine(path, **kw):
    from .cosine import CosineLabeler

    return CosineLabeler.load(path, **kw)


LABELERS: dict[str, Callable[..., Labeler]] = {"cross-encoder": _cross_encoder, "llm": _llm,
                                               "minilm-cosine": _cosine}


def get_labeler(name: str, **options) -> Labeler:
    if name not in LABELERS:
        raise ValueError(f"unknown labeler {name!r} (known: {', '.join(LABELERS)})")
    return LABELERS[name](**options)


@dataclass(frozen=True)
class LabelerSpec:
    """A labeler by name and options, to be built where it runs (each Ray actor builds its own)."""
    name: str
    options: dict = field(default_factory=dict)

    def build(self) -> Labeler:
        return get_labeler(self.name, **self.options)


def pairs_from(catalog, queries, product_ids) -> list[Pair]:
    """Pairs for parallel lists of query texts and product ids, with each product's row and text."""
    from ...data.catalog import is_missing, product_text

    product_ids = [catalog.coerce_id(p) for p in product_ids]
    unknown = [p for p in product_ids if p not in catalog.row_of]
    if unknown:
        raise KeyError(f"{catalog.root}: unknown product id {unknown[0]!r} ({len(unknown)} unknown in all)")
    wanted = list(dict.fromkeys(product_ids))
    rows = catalog.products.iloc[[catalog.row_of[p] for p in wanted]].to_dict("records")
    by_id = {}
    for pid, row in zip(wanted, rows):
        row = {k: (None if is_missing(v) else v) for k, v in row.items()}
        by_id[pid] = (row, product_text(row, catalog.attributes))
    return [Pair(str(q), by_id[p][1], by_id[p][0]) for q, p in zip(queries, product_ids)]
