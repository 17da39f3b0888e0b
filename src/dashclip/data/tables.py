"""Reading a user's product file (CSV, Parquet or JSONL) into a `Table` of rows of text, with row numbers as
the user sees them: CSV and JSONL give the line number (CSV counts the header as line 1), Parquet the row number.
A delimited file's delimiter (comma, tab, semicolon or pipe) is read off its header line (`csv_delimiter`),
whatever its extension: shops export tab-separated files named .csv (WANDS does) and semicolon CSVs.

Bytes that are not valid in the encoding become U+FFFD and NUL characters are removed, each noted on its row
(`RawRow.non_utf8`, `RawRow.nul_bytes`); a byte-order mark is skipped. A CSV quote left open does not swallow the
lines after it: that record is a malformed row, and reading starts again on the next line.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from ..clihelp import UserError
from .rows import RawRow, Table

FORMATS = ("csv", "parquet", "jsonl")
DELIMITERS = (",", "\t", ";", "|")
EXTENSION_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
                     ".jsonl": "jsonl", ".ndjson": "jsonl"}


_SURROGATES = re.compile("[\udc80-\udcff]")


def _fix_utf8(s: str) -> tuple[str, bool]:
    """Text decoded with surrogateescape -> (text with U+FFFD for each undecodable byte, whether any was)."""
    if not _SURROGATES.search(s):
        return s, False
    return _SURROGATES.sub("\ufffd", s), True


def _clean_text(s: str) -> tuple[str, bool, int]:
    """-> (text with U+FFFD for undecodable bytes and NUL characters removed, whether any byte was not
    UTF-8, how many NULs were removed)."""
    s, bad = _fix_utf8(s)
    nuls = s.count("\0")
    return (s.replace("\0", "") if nuls else s), bad, nuls


def _clean_cell(row: "RawRow", name: str, value: Any) -> Any:
    """A text cell cleaned (see _clean_text), with what was changed noted on the row."""
    if not isinstance(value, str):
        return value
    value, bad, nuls = _clean_text(value)
    if bad:
        row.non_utf8.append(name)
    if nuls:
        row.nul_bytes[name] = nuls
    return value


def header_delimiter(header: str, default: str = ",") -> str:
    """The delimiter of a delimited text file whose first line is `header`: the one of comma, tab, semicolon
    and pipe that occurs most often in it outside quotes; `default` on a tie with it, or when none occurs."""
    bare = re.sub(r'"[^"]*"', "", header)
    counts = {d: bare.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == default))
    return best if counts[best] > counts.get(default, 0) else default


def csv_delimiter(path: str | os.PathLike, encoding: str = "utf-8", default: str | None = None) -> str:
    """`header_delimiter` of a file's first line; `default` (else tab for a .tsv, comma for anything else)
    when its header does not say."""
    path = Path(path)
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        header = f.readline().lstrip("\ufeff")
    return header_delimiter(header, default or ("\t" if path.suffix.lower() == ".tsv" else ","))


def read_frame(path: str | os.PathLike, encoding: str = "utf-8") -> tuple["pd.DataFrame", int]:
    """A small user table (grades, a query list, a search log) as a DataFrame of strings, for code that works
    on whole columns: CSV/TSV (delimiter from the header line), JSONL or Parquet by the extension. Returns
    (the frame, the number the user sees for its first row: 2 for CSV, whose header is line 1, else 1).
    A product file goes through `read_table`, which accounts for every row."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls", ".ods"):
        raise UserError(f"{path}: spreadsheet files are not read; save it as CSV (or TSV, JSONL, Parquet)")
    fmt = "jsonl" if suffix == ".json" else EXTENSION_FORMATS.get(suffix, "csv")   # .txt and the like: CSV
    try:
        if fmt == "parquet":
            return pd.read_parquet(path), 1
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False), 1
        return pd.read_csv(path, sep=csv_delimiter(path, encoding), dtype=str, keep_default_na=False,
                           encoding="utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding), 2
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        try:                 # the parser's offset is within its own buffer: find the byte in the whole file
            data.decode(e.encoding)
            where = ""
        except UnicodeDecodeError as whole:
            line = data.count(b"\n", 0, whole.start) + 1
            where = f" line {line}:"
        raise UserError(f"{path}:{where} not valid {e.encoding} text ({e.reason}); save it as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:      # pyarrow's errors are ValueError / OSError
        raise UserError(f"{path}: cannot read it as {fmt} ({type(e).__name__}: {e})") from None


def read_table(path: str | os.PathLike, fmt: str | None = None, encoding: str = "utf-8") -> Table:
    """Read a CSV, Parquet or JSONL file (format from `fmt`, else from the extension). Text files are
    decoded as `encoding`; bytes that do not decode are flagged per row and field (see RawRow.non_utf8)."""
    path = Path(path)
    fmt = fmt or EXTENSION_FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise UserError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        f"use --format ({', '.join(FORMATS)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    if fmt == "parquet":
        return _read_parquet(path)  # Parquet strings are UTF-8 by definition
    try:
        "".encode(encoding)
    except LookupError:
        raise UserError(f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return (_read_csv if fmt == "csv" else _read_jsonl)(path, encoding)


class _Lines:
    """An iterator over physical lines from a start index, so that the CSV reader's records map to lines."""

    def __init__(self, lines: list[str], start: int):
        self.lines, self.pos = lines, start

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _parse_strict(text: str, delimiter: str) -> list[list[str]] | None:
    """`text` parsed as strict CSV (quotes must close, and close before a delimiter or a line end); None if
    it is not."""
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error:
        return None


def _quoted_span_problem(lines: list[str], first: int, last: int, cells: list[str], width: int,
                         delimiter: str) -> str | None:
    """Why the record on lines first..last (0-based, last > first) is not a real multi-line quoted field but
    a quote left open that swallowed the lines after it; None when it reads as a real one.

    A real one is strict CSV, has the header's width, and its inner lines do not each read as a row of
    that width (as the rows a stray quote swallows do)."""
    span = "".join(lines[first:last + 1])
    if _parse_strict(span, delimiter) != [cells]:
        return ("a quoted field opened on this line is not closed properly"
                + (" (it runs to the end of the file)" if last == len(lines) - 1
                   and _parse_strict(span + '"', delimiter) is not None else ""))
    if len(cells) != width:
        return f"a quoted field opened on this line spans lines and leaves {len(cells)} fields, not {width}"
    inner = lines[first + 1:last]
    if inner and width >= 3 and all(len((_parse_strict(l, delimiter) or [[]])[0]) == width for l in inner):
        return "a quoted field opened on this line spans lines that each read as a row"
    return None


def _read_csv(path: Path, encoding: str = "utf-8") -> Table:
    """Read a CSV/TSV file into rows; every non-blank line after the header is accounted for.

    A quoted field may span lines. A quote left open would swallow the lines after it into one field (up to
    the next quote, or the end of the file): such a record (see `_quoted_span_problem`) is reported as a
    malformed row at its first line, and reading starts again on the line after it, so each swallowed line
    is read as the row it is."""
    # Decode with surrogateescape so one bad byte never stops the file: each field is checked below.
    text = path.read_bytes().decode(encoding, "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = list(io.StringIO(text, newline=""))  # splits at \n, \r\n and \r only, as the csv module does
    delimiter = header_delimiter(lines[0] if lines else "", "\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(csv.reader(lines[:1], delimiter=delimiter))
    except (StopIteration, csv.Error):
        raise UserError(f"{path}: empty file (no header line)") from None
    header = [_clean_text(h)[0].strip() for h in header]
    width = len(header)
    rows: list[RawRow] = []
    src = _Lines(lines, 1)
    reader = csv.reader(src, delimiter=delimiter)
    while True:
        first = src.pos          # 0-based index of the record's first line
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:   # e.g. a field over the size limit: report the first line, read on after it
            rows.append(RawRow(first + 1, {}, malformed=f"cannot parse CSV ({e}: a quote left open on this line?); "
                                                         f"this line dropped, the lines after it read on their own"))
            src.pos = first + 1
            reader = csv.reader(src, delimiter=delimiter)
            continue
        last = src.pos - 1
        if last > first:
            why = _quoted_span_problem(lines, first, last, cells, width, delimiter)
            if why:
                rows.append(RawRow(first + 1, {}, malformed=f"{why} (lines {first + 1}-{last + 1}); this line "
                                                            f"dropped, the lines after it read on their own"))
                src.pos = first + 1
                reader = csv.reader(src, delimiter=delimiter)
                continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # blank line: not a row
        row = RawRow(first + 1, {})
        if len(cells) > width:
            row.malformed = f"{len(cells)} fields but the header has {width}"
        for name, cell in zip(header, cells):
            if name in row.values:
                continue  # a repeated header name: the first column wins (reported as duplicate_column)
            row.values[name] = _clean_cell(row, name, cell)
        rows.append(row)
    return Table(str(path), header, rows, "line")


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    columns = list(table.column_names)
    rows = []
    for i, rec in enumerate(table.to_pylist(), 1):
        row = RawRow(i, {})
        for name, v in rec.items():
            if isinstance(v, bytes):  # binary column: decode, flag bad bytes
                v = v.decode("utf-8", "surrogateescape")
            row.values[name] = _clean_cell(row, name, v)
        rows.append(row)
    return Table(str(path), columns, rows, "row")


def _read_jsonl(path: Path, encoding: str = "utf-8") -> Table:
    columns: dict[str, None] = {}
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.decode(encoding, "surrogateescape")
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append(RawRow(number, {}, malformed=f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(obj, dict):
                rows.append(RawRow(number, {}, malformed=f"a JSON {type(obj).__name__}, not an object"))
                continue
            row = RawRow(number, {})
            for name, v in obj.items():
                name = _clean_text(name)[0]
                row.values[name] = _clean_cell(row, name, v)
                columns.setdefault(name)
            rows.append(row)
    return Table(str(path), list(columns), rows, "line")
