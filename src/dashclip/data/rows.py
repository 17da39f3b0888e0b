"""What an import reads: the mapping of input columns to catalog roles (`Mapping`), the input file as
rows (`Table`, `RawRow`) and the extra images a preset gives (`ExtraImage`).

The importer and the presets both build on these, so they live apart from both: the importer asks
the presets for a preset by name, and a preset hands the importer these.
"""
from __future__ import annotations

import difflib
import string
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..clihelp import UserError


@dataclass
class Mapping:
    """Which input column plays which role. Only `id` and `title` are required.

    `image` names a column holding a path (relative to `images_dir`) or an http(s) URL. When the file has
    no such column, `image_pattern` builds the path from the row, e.g. "{id}.jpg" (column names in braces).
    `images_dir` defaults to the folder of the input file; a relative `images_dir` that does not exist from
    the current directory is taken relative to the input file's folder."""

    id: str = "id"
    title: str = "title"
    image: str | None = None
    image_pattern: str | None = None
    category: str | None = None
    text: list[str] = field(default_factory=list)
    attrs: list[str] = field(default_factory=list)
    images_dir: str | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "mapping") -> "Mapping":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            hints = "; ".join(f"{k!r}{_did_you_mean(k, known)}" for k in unknown)
            raise UserError(f"{where}: unknown key(s) {hints}. Valid keys: {', '.join(sorted(known))}")
        d = dict(d)
        for key in ("text", "attrs"):
            v = d.get(key)
            if isinstance(v, str):
                d[key] = [v]
            elif v is None:
                d[key] = []
            elif not (isinstance(v, list) and all(isinstance(c, str) for c in v)):
                raise UserError(f"{where}: {key!r} must be a list of column names, got {v!r}")
        for key in known - {"text", "attrs"}:
            if d.get(key) is not None and not isinstance(d[key], str):
                raise UserError(f"{where}: {key!r} must be a column name (a string), got {d[key]!r}")
        mapping = cls(**d)
        if mapping.image_pattern:
            try:
                mapping.image_pattern.format_map({c: "x" for c in mapping.pattern_columns()})
            except (ValueError, KeyError, IndexError, AttributeError) as e:
                raise UserError(f"{where}: image_pattern {mapping.image_pattern!r} is not a pattern like "
                                f"'{{id}}.jpg' ({e})") from None
        return mapping

    def to_dict(self) -> dict:
        return asdict(self)

    def columns(self) -> dict[str, str]:
        """Role label -> input column, in a fixed order (text/attrs labelled text[i], attr[i])."""
        roles = {"id": self.id, "title": self.title}
        for role in ("image", "category"):
            if getattr(self, role):
                roles[role] = getattr(self, role)
        roles.update({f"text[{i}]": c for i, c in enumerate(self.text)})
        roles.update({f"attr[{i}]": c for i, c in enumerate(self.attrs)})
        return roles

    def pattern_columns(self) -> list[str]:
        if not self.image_pattern:
            return []
        return [f for _, f, _, _ in string.Formatter().parse(self.image_pattern) if f]


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    # difflib over a very wide header would take seconds: only the case-insensitive match there
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6) if len(choices) <= 5000 else []
    if not close:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class RawRow:
    number: int                           # line (CSV/JSONL) or row (Parquet) number in the user's file
    values: dict[str, Any]
    non_utf8: list[str] = field(default_factory=list)   # fields whose bytes were not UTF-8 (now U+FFFD)
    nul_bytes: dict[str, int] = field(default_factory=dict)  # field -> NUL characters removed from it
    malformed: str | None = None          # why the row could not be parsed (the row is dropped)


@dataclass
class Table:
    """An input file read into rows. `row_label` says how `RawRow.number` counts ("line" or "row")."""

    file: str
    columns: list[str]
    rows: list[RawRow]
    row_label: str = "line"


@dataclass
class ExtraImage:
    """An additional image of a product (e.g. an in-store photo), given by a preset."""

    product_id: str
    path: str           # relative to the images dir
    split: str | None
    file: str
    row: int
