"""`dashclip catalog import`: a user's product file (CSV, Parquet or JSONL) -> the canonical catalog dir.

The user maps their own column names to roles (see `Mapping`): `id`, `title` and `image` (a path relative to
an images folder, or an http(s) URL), plus optional `category`, extra `text` fields and `attrs` kept for
filtering. Built-in presets (`presets.py`) fill the mapping for the shared datasets.

Bad input is normal input. Every input row ends up either in the catalog or in the report:

    problem                 what happens to the row
    ---------------------   -------------------------------------------------------------
    malformed_row           dropped (a CSV row with too many fields, a JSONL line that is not an object)
    missing_id              dropped
    duplicate_id            dropped; the first row with that id is kept
    empty_title             dropped (empty, whitespace-only, or a missing-value marker such as "NA")
    non_utf8                kept; the bad bytes become U+FFFD in that field
    no_image                kept without image (the image cell is empty)
    image_<kind>            kept without image: image_missing, image_zero_byte, image_not_an_image,
                            image_truncated, image_corrupt, image_decompression_bomb, image_unreadable,
                            image_fetch_failed (URL)
                            image_too_large (over max_image_bytes), image_decompression_bomb (over max_pixels,
                            40 MP by default, refused from the header), image_outside_images_dir (a path that
                            leaves the images dir: "../", absolute, or a symlink out), image_url_refused (a URL
                            whose host resolves to a loopback, link-local or private address; allow_private_urls)
    image_downscaled        kept; the image was larger than `max_side` and was downscaled when copied
    nul_bytes               kept; NUL characters were removed from that field
    unknown_column          (mapping) an optional column named in the mapping is not in the file: ignored
    duplicate_column        (header) a column name appears twice: the first one is used
    unknown_product         (extra images) the product id of an extra image is not in the catalog: dropped

An extra image (presets) that fails the image checks is dropped and reported under its image_<kind>; the
product keeps its other images.

A missing *required* column (id, title, or the image column when one is mapped) stops the import with an
error, and so does an input where no usable product is left. Everything else goes on with the good rows.

Row numbers are as the user sees them in their file: CSV and JSONL give the line number (CSV counts the
header as line 1), Parquet gives the row number (1 = the first row).

The output is deterministic: products sorted by id, images named from the product id, so importing the same
input twice gives a byte-identical catalog.parquet and the same content_hash.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..clihelp import UserError
from ..io import atomic_dir, mark_output_dir, prepare_output_dir, write_json, write_text
from ..settings import runs_dir
from .catalog import CATALOG_FILE, CORE_COLUMNS, IMAGES_FILE, MANIFEST_FILE
from .images import ImageError, check_image, decode_image, probe_image, read_image_bytes
from .rows import ExtraImage, Mapping, RawRow, Table, _did_you_mean

FORMATS = ("csv", "parquet", "jsonl")
EXTENSION_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
                     ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024   # one cap for a local image file (checked by stat) and a download
# Import refuses larger images before decoding: a 40 MP RGB image is 120 MB decoded (9000 x 9000 would be 243 MB,
# times the worker threads). Photos of today's phones (12-24 MP) pass. load_image's own default is Pillow's.
IMPORT_MAX_PIXELS = 40_000_000
LARGE_DECODE_PIXELS = 4_000_000   # images above this decode one at a time, so the threads never hold many
MAX_REDIRECTS = 5
REPORT_ROWS = 20  # examples kept per problem in the report
DROPPED, KEPT, COLUMN = "dropped", "kept", "column"  # what a problem did to its row
INT64_MAX = 2**63 - 1
# Titles that spreadsheets and pandas write for "no value": a product called "NA" is a missing title.
MISSING_TITLES = frozenset({"na", "n/a", "nan", "null", "none", "-"})


class MissingColumnError(UserError):
    """A column the mapping requires is not in the file."""


class NothingToImportError(UserError):
    """No usable product is left after validation. `report` holds what was found."""

    def __init__(self, message: str, report: "Report"):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------------------
# Reading the input file into rows of text, with row numbers as the user sees them
# ---------------------------------------------------------------------------------------------------------

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
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = list(io.StringIO(text, newline=""))  # splits at \n, \r\n and \r only, as the csv module does
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


def _text(v: Any) -> str | None:
    """A cell as text (None when empty). Integral floats lose their ".0": Parquet may store ids as float."""
    if v is None:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)
    s = str(v).strip()
    return s or None


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Problem:
    code: str       # e.g. "duplicate_id", "image_truncated"
    action: str     # DROPPED, KEPT or COLUMN
    file: str
    row: int | None
    field: str | None
    message: str    # the full sentence shown to the user: names the file, the row and the field


@dataclass
class Report:
    source: str
    row_label: str
    rows_read: int = 0
    products: int = 0
    products_with_image: int = 0
    extra_images_read: int = 0
    extra_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, code: str, action: str, file: str, row: int | None, field: str | None, what: str,
            row_label: str | None = None) -> Problem:
        where = file if row is None else f"{file} {row_label or self.row_label} {row}"
        message = f"{where}: {what}" if field is None else f"{where}, field {field}: {what}"
        p = Problem(code, action, file, row, field, message)
        self.problems.append(p)
        return p

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.code] = out.get(p.code, 0) + 1
        return dict(sorted(out.items()))

    @property
    def rows_dropped(self) -> int:
        return sum(1 for p in self.problems if p.action == DROPPED and p.file == self.source)

    def by_code(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in sorted(self.problems, key=lambda p: (p.code, p.file, p.row or 0, p.field or "")):
            out.setdefault(p.code, []).append(p)
        return out

    def to_dict(self, first: int = REPORT_ROWS) -> dict:
        groups = self.by_code()
        return {
            "source": self.source,
            "row_numbers": ("line numbers in the file, the header being line 1" if self.row_label == "line"
                            else "row numbers, 1 = the first row"),
            "rows_read": self.rows_read,
            "rows_dropped": self.rows_dropped,
            "products": self.products,
            "products_with_image": self.products_with_image,
            "products_without_image": self.products - self.products_with_image,
            "extra_images_read": self.extra_images_read,
            "extra_images": self.extra_images,
            "seconds": round(self.seconds, 3),
            "products_per_second": round(self.products / self.seconds, 1) if self.seconds else None,
            "counts": self.counts(),
            "problems": {code: {"action": ps[0].action, "count": len(ps),
                                "first": [asdict(p) for p in ps[:first]]} for code, ps in groups.items()},
        }

    def to_markdown(self, first: int = REPORT_ROWS) -> str:
        d = self.to_dict(first)
        lines = [f"# Import report: {self.source}", "",
                 f"- rows read: {d['rows_read']} ({d['row_numbers']})",
                 f"- products imported: {d['products']} ({d['products_with_image']} with an image, "
                 f"{d['products_without_image']} without)",
                 f"- rows dropped: {d['rows_dropped']}"]
        if d["extra_images_read"]:
            lines.append(f"- extra images: {d['extra_images']} of {d['extra_images_read']} imported")
        lines.append(f"- time: {d['seconds']} s ({d['products_per_second']} products/s)")
        lines += ["", "| problem | rows | what happened |", "|---|---:|---|"]
        action_text = {DROPPED: "row dropped", KEPT: "row kept (see message)", COLUMN: "column ignored"}
        for code, g in d["problems"].items():
            lines.append(f"| {code} | {g['count']} | {action_text[g['action']]} |")
        if not d["problems"]:
            lines.append("| (none) | 0 | |")
        for code, g in d["problems"].items():
            lines += ["", f"## {code} ({g['count']}, first {len(g['first'])})", ""]
            lines += [f"- {p['message']}" for p in g["first"]]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------

@dataclass
class ImageJob:
    product_key: Any
    ref: str            # path as written in the input, or a URL
    path: Path | None   # resolved local path (None for URLs)
    role: str           # "primary" | "extra"
    split: str | None
    file: str           # input file and row that named this image, for messages
    row: int
    field: str
    row_label: str
    dest: str = ""      # catalog-relative path without extension, e.g. "images/15970"


@dataclass
class ImageOutcome:
    job: ImageJob
    rel: str | None = None          # catalog-relative path when written
    digest: str | None = None       # sha256 of the written bytes
    error: ImageError | None = None
    downscaled: tuple[int, int, int, int] | None = None   # (w, h, new_w, new_h)


_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})


def _safe_stem(key: Any) -> str:
    """A file-name stem for a product id that is safe on every file system (never a path from the input):
    the id itself when it is short, lowercase [a-z0-9_-], else a slug plus a hash of the id."""
    s = str(key)
    if re.fullmatch(r"[a-z0-9_-]{1,64}", s) and s not in _WINDOWS_RESERVED:
        return s
    slug = re.sub(r"[^a-z0-9_-]+", "-", s.lower()).strip("-")[:40] or "id"
    return f"{slug}-{hashlib.sha1(s.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def _is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def _inside(images_root: Path, ref: str) -> Path | None:
    """The real path of `ref` (relative to the images dir, symlinks followed) when it lies inside the
    images dir `images_root` (itself a real path); None when it leaves it: "../", an absolute path, or a
    symlink pointing out. Nothing is read, so the answer never says whether the target exists."""
    if os.path.isabs(ref) or ref.startswith("~"):
        return None
    real = Path(os.path.realpath(images_root / ref))
    return real if real == images_root or images_root in real.parents else None


def _private_address(host: str, port: int) -> str | None:
    """The first address of `host` that is loopback, link-local, private or otherwise not public; None when
    every address it resolves to is public. Raises ImageError when it does not resolve."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise ImageError("fetch_failed", f"download failed: cannot resolve host {host!r} ({e})") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return str(ip)
    return None


def _check_url(url, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or (unless `allow_private`) whose host resolves to any address that
    is not public: loopback, link-local, private. Checked before connecting, so a refusal says nothing about
    what listens there."""
    if url.scheme not in ("http", "https") or not url.host:
        raise ImageError("url_refused", "URL refused: only http(s) URLs with a host are fetched")
    if allow_private:
        return
    address = _private_address(url.host, url.port or (443 if url.scheme == "https" else 80))
    if address is not None:
        raise ImageError("url_refused", f"URL refused: host {url.host!r} resolves to the non-public address "
                                        f"{address} (give --allow-private-urls to fetch from a local network)")


def _fetch(client, url: str, max_bytes: int, allow_private: bool = False) -> bytes:
    """Download `url` (at most `max_bytes`), following redirects by hand so every hop's host is checked."""
    import httpx

    try:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(target, allow_private)
            with client.stream("GET", target) as r:
                if r.is_redirect and "location" in r.headers:
                    target = target.join(r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise ImageError("fetch_failed", f"download failed: HTTP {r.status_code}")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ImageError("fetch_failed", f"download refused: {int(declared):,} bytes is over the "
                                                     f"limit of {max_bytes:,}")
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageError("fetch_failed", f"download stopped: over the limit of {max_bytes:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ImageError("fetch_failed", f"download failed: more than {MAX_REDIRECTS} redirects")
    except ImageError as e:
        raise ImageError(e.kind, e.reason, url) from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
        raise ImageError("fetch_failed", f"download failed ({type(e).__name__}: {e})", url) from None


def _process_image(job: ImageJob, out_root: Path, max_side: int, max_pixels: int, client,
                   max_image_bytes: int, allow_private_urls: bool = False,
                   large_decode: threading.Lock | None = None) -> ImageOutcome:
    """Read (or download), validate and copy one image. Fine images keep their original bytes.
    The file size and pixel count are checked before decoding; an image over LARGE_DECODE_PIXELS decodes
    under `large_decode`, so the threads never hold more than one large image at a time."""
    outcome = ImageOutcome(job)
    try:
        data = (_fetch(client, job.ref, max_image_bytes, allow_private_urls) if job.path is None
                else read_image_bytes(job.path, max_bytes=max_image_bytes))
        info = probe_image(data, job.ref, max_pixels=max_pixels)
        large = info.width * info.height > LARGE_DECODE_PIXELS and large_decode is not None
        with (large_decode if large else contextlib.nullcontext()):
            data, ext = _validated(data, info, job, max_side, max_pixels, outcome)
    except ImageError as e:
        outcome.error = e
        return outcome
    rel = job.dest + ext
    (out_root / rel).write_bytes(data)
    outcome.rel = rel
    outcome.digest = hashlib.sha256(data).hexdigest()
    return outcome


def _validated(data: bytes, info, job: ImageJob, max_side: int, max_pixels: int, outcome: ImageOutcome):
    """Decode once: -> (the bytes to copy, their extension); downscaled above `max_side`."""
    ext = info.extension
    if max(info.width, info.height) <= max_side:
        check_image(data, job.ref, max_pixels=max_pixels)
    else:
        im = decode_image(data, job.ref, max_side=max_side, max_pixels=max_pixels)
        buf = io.BytesIO()
        if info.format in ("JPEG", "MPO"):
            im.save(buf, "JPEG", quality=90)
            ext = ".jpg"
        else:
            im.save(buf, "PNG")
            ext = ".png"
        data = buf.getvalue()
        outcome.downscaled = (info.width, info.height, *im.size)
    return data, ext


# ---------------------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------------------

@dataclass
class ImportResult:
    out: Path
    report: Report
    content_hash: str
    manifest: dict

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


def _parse_ids(values: list[str]) -> tuple[bool, list[Any]]:
    """Ids become int64 when every one is an integer that fits, else strings."""
    if values and all(re.fullmatch(r"[+-]?\d{1,19}", v) for v in values):
        ints = [int(v) for v in values]
        if all(-INT64_MAX - 1 <= i <= INT64_MAX for i in ints):
            return True, ints
    return False, list(values)


def _infer_type(values: list[str | None]):
    """An attribute column's type: int64 if every value is an integer, float64 if every one is a number,
    else string (None stays null)."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(re.fullmatch(r"[+-]?\d{1,18}", v) for v in present):
        return pa.int64(), [None if v is None else int(v) for v in values]
    if present:
        try:
            floats = [None if v is None else float(v) for v in values]
            if all(f is None or math.isfinite(f) for f in floats):
                return pa.float64(), floats
        except ValueError:
            pass
    return pa.string(), values


def _resolve_source(source, mapping, preset, fmt, encoding):
    """-> (table, mapping, images_dir, preset name or None, extra images)."""
    from .presets import PRESETS, get_preset

    source_path = Path(source) if source is not None else None
    if preset is None and source is not None and str(source) in PRESETS and not source_path.is_file():
        preset = str(source)
    if preset is not None:
        p = get_preset(preset).load()
        if mapping is not None:  # keys given by the user override the preset's
            base = p.mapping.to_dict()
            base.update(mapping if isinstance(mapping, dict) else mapping.to_dict())
            p.mapping = Mapping.from_dict(base)
        table = p.table if p.table is not None else read_table(p.file, fmt, encoding)
        images_dir = Path(p.mapping.images_dir) if p.mapping.images_dir else Path(table.file).parent
        return table, p.mapping, images_dir, preset, p.extra_images
    if source is None:
        raise UserError("give a source file or a preset name")
    if not source_path.is_file():
        raise FileNotFoundError(f"{source}: no such file, and not a preset name "
                                f"(presets: {', '.join(sorted(PRESETS))})")
    # A copy: the column check below adjusts it, and the caller's object stays as it was.
    mapping = Mapping.from_dict(mapping.to_dict() if isinstance(mapping, Mapping) else (mapping or {}))
    table = read_table(source_path, fmt, encoding)
    images_dir = Path(mapping.images_dir) if mapping.images_dir else source_path.parent
    if mapping.images_dir and not images_dir.is_absolute() and not images_dir.exists():
        images_dir = source_path.parent / mapping.images_dir  # relative to the input file
    return table, mapping, images_dir, None, []


def _check_columns(table: Table, mapping: Mapping, report: Report) -> Mapping:
    """Required columns must exist (else MissingColumnError); a missing optional one is reported and ignored."""
    required = {"id": mapping.id, "title": mapping.title}
    if mapping.image:
        required["image"] = mapping.image
    for col in mapping.pattern_columns():
        required[f"image_pattern {mapping.image_pattern!r}"] = col
    times = Counter(table.columns)   # linear: a header may have 200,000 columns
    have = list(times)               # the distinct names, in header order
    for col in sorted(c for c, n in times.items() if n > 1):
        report.add("duplicate_column", COLUMN, table.file, None, repr(col),
                   f"column {col!r} appears {times[col]} times in the header; the first one is used")
    for role, col in required.items():
        if col not in times:
            shown = ", ".join(have[:30]) + (f", ... ({len(have):,} columns in all)" if len(have) > 30 else "")
            raise MissingColumnError(
                f"{table.file}: required column {col!r} (role {role}) not found{_did_you_mean(col, have)}. "
                f"The file has columns: {shown or '(none)'}. "
                f"Map the right one with --{role.split()[0].replace('_', '-')} COLUMN or a mapping file.")
    for label in ("category",):
        col = getattr(mapping, label)
        if col and col not in times:
            report.add("unknown_column", COLUMN, table.file, None, label,
                       f"mapping names column {col!r} which is not in the file{_did_you_mean(col, have)}; "
                       f"ignored")
            mapping.category = None
    for key in ("text", "attrs"):
        kept = []
        for col in getattr(mapping, key):
            if col in times:
                kept.append(col)
            else:
                report.add("unknown_column", COLUMN, table.file, None, key,
                           f"mapping names column {col!r} which is not in the file{_did_you_mean(col, have)}; "
                           f"ignored")
        setattr(mapping, key, kept)
    clash = [c for c in mapping.attrs if c in CORE_COLUMNS]
    if clash:
        raise UserError(f"{table.file}: attribute column(s) {clash} have the name of a catalog column "
                        f"({', '.join(CORE_COLUMNS)}); rename them in the input")
    return mapping


def import_catalog(source: str | os.PathLike | None, out: str | os.PathLike | None = None,
                   mapping: Mapping | dict | None = None, preset: str | None = None, fmt: str | None = None,
                   name: str | None = None, encoding: str = "utf-8", max_side: int = DEFAULT_MAX_SIDE,
                   max_pixels: int = IMPORT_MAX_PIXELS,
                   workers: int | None = None, fetch_timeout: float = 10.0,
                   max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                   progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
                   allow_private_urls: bool = False) -> ImportResult:
    """Import `source` (a CSV/Parquet/JSONL file, or a preset name) into the catalog dir `out`.

    Returns the ImportResult (with the report). Raises MissingColumnError when a required column is missing
    and NothingToImportError when no usable product is left; every other problem goes into the report.
    `out` is checked by `dashclip.io.prepare_output_dir` before anything is read: a non-empty folder that
    is not a catalog needs `overwrite=True`, and `out` may never be or hold an input (nor lie inside an
    `images_dir` the mapping names). Local image paths must stay inside the images dir; image URLs whose
    host is loopback, link-local or private are refused unless `allow_private_urls`. An image file (or
    download) over `max_image_bytes`, or an image over `max_pixels`, is refused before it is decoded.
    `progress(done, total)` is called as images are validated."""
    started = time.perf_counter()
    table, mapping, images_dir, preset, extras = _resolve_source(source, mapping, preset, fmt, encoding)
    name = name or preset or Path(table.file).stem
    inputs = [table.file, *sorted({e.file for e in extras})]
    if mapping.images_dir and (mapping.image or mapping.image_pattern or extras):
        inputs.append(images_dir)  # the folder the user named; the default (the file's own folder) may hold out
    out = prepare_output_dir(out if out is not None else runs_dir() / "catalogs" / name, "catalog",
                             inputs=inputs, overwrite=overwrite, check_only=True)  # atomic_dir replaces it whole
    report = Report(source=table.file, row_label=table.row_label, rows_read=len(table.rows))
    mapping = _check_columns(table, mapping, report)

    products, is_int, jobs = _rows_to_products(table, mapping, images_dir, report, encoding)
    stems = _unique_stems(products)
    for job in jobs:
        job.dest = f"images/{stems[job.product_key]}"
    jobs += _extra_image_jobs(extras, products, stems, is_int, images_dir, report)

    if not products:
        report.seconds = time.perf_counter() - started
        raise NothingToImportError(_nothing_left_message(report), report)

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        outcomes = _run_image_jobs(jobs, tmp, max_side, max_pixels, workers, fetch_timeout,
                                   max_image_bytes, progress, allow_private_urls)
        image_rows = []
        digests = []
        for o in outcomes:
            j = o.job
            if o.error is not None:
                what = ("kept without image" if j.role == "primary" else "extra image dropped")
                report.add(f"image_{o.error.kind}", KEPT if j.role == "primary" else DROPPED, j.file, j.row,
                           j.field, f"{o.error.reason}: {j.path or j.ref}; {what}", row_label=j.row_label)
                continue
            if o.downscaled:
                w, h, nw, nh = o.downscaled
                report.add("image_downscaled", KEPT, j.file, j.row, j.field,
                           f"image is {w}x{h}, larger than max_side={max_side}: copied downscaled to "
                           f"{nw}x{nh}: {j.ref}", row_label=j.row_label)
            if j.role == "primary":
                products[j.product_key]["image"] = o.rel
            else:
                report.extra_images += 1
            image_rows.append((j.product_key, o.rel, j.role, j.split))
            digests.append((o.rel, o.digest))

        report.products = len(products)
        report.products_with_image = sum(1 for p in products.values() if p["image"])
        content_hash = _write_tables(tmp, products, image_rows, digests, mapping, is_int)
        manifest = {
            "name": name, "source": table.file, "preset": preset, "mapping": mapping.to_dict(),
            "attributes": list(mapping.attrs), "text_fields": list(mapping.text),
            "id_type": "int64" if is_int else "string",
            "counts": {"products": report.products, "with_image": report.products_with_image,
                       "images": len(image_rows), "extra_images": report.extra_images},
            "settings": {"max_side": max_side, "max_pixels": max_pixels, "max_image_bytes": max_image_bytes},
            "content_hash": content_hash,
        }
        write_json(tmp / MANIFEST_FILE, manifest)
        mark_output_dir(tmp, "catalog")
        report.seconds = time.perf_counter() - started
        write_json(tmp / "report.json", report.to_dict())
        write_text(tmp / "report.md", report.to_markdown())
    return ImportResult(out=out, report=report, content_hash=content_hash, manifest=manifest)


def _rows_to_products(table: Table, mapping: Mapping, images_dir: Path, report: Report, encoding: str):
    """Validate the rows: -> (products by id, whether ids are int64, primary image jobs).
    Rows that cannot be products are reported as dropped; fields with bad bytes as kept."""
    role_of = {col: role for role, col in reversed(list(mapping.columns().items()))}

    def add(row: RawRow, code, action, field_, what):
        report.add(code, action, table.file, row.number, field_, what)

    candidates: list[tuple[RawRow, str]] = []
    for row in table.rows:
        if row.malformed:
            add(row, "malformed_row", DROPPED, None, f"{row.malformed}; row dropped")
            continue
        for col in row.non_utf8:
            if col in role_of or col in mapping.pattern_columns():
                add(row, "non_utf8", KEPT, _field(col, role_of),
                    f"text is not valid {encoding.upper()}; the bad bytes were replaced with U+FFFD and the "
                    f"row kept (if the whole file is in another encoding, give --encoding)")
        for col, n in row.nul_bytes.items():
            if col in role_of or col in mapping.pattern_columns():
                add(row, "nul_bytes", KEPT, _field(col, role_of),
                    f"text held {n} NUL character{'s' if n != 1 else ''} (\\0); removed, row kept")
        pid = _text(row.values.get(mapping.id))
        if pid is None:
            add(row, "missing_id", DROPPED, _field(mapping.id, role_of), "empty id; row dropped")
            continue
        title = _text(row.values.get(mapping.title))
        if title is None:
            add(row, "empty_title", DROPPED, _field(mapping.title, role_of),
                f"empty or whitespace-only title (id {pid!r}); row dropped")
            continue
        if title.lower() in MISSING_TITLES:
            add(row, "empty_title", DROPPED, _field(mapping.title, role_of),
                f"title is the missing-value marker {title!r} (id {pid!r}); row dropped")
            continue
        candidates.append((row, pid))

    # The id type is decided over all rows first, so that "7" and "007" are the same int64 id.
    is_int, keys = _parse_ids([pid for _, pid in candidates])
    products: dict[Any, dict] = {}
    first_row: dict[Any, int] = {}
    jobs: list[ImageJob] = []
    for (row, pid), key in zip(candidates, keys):
        if key in products:
            add(row, "duplicate_id", DROPPED, _field(mapping.id, role_of),
                f"duplicate id {pid!r} (first seen at {table.row_label} {first_row[key]}); row dropped")
            continue
        first_row[key] = row.number
        v = row.values
        texts = [t for t in (_text(v.get(c)) for c in mapping.text) if t]
        products[key] = {
            "id": key, "title": _text(v[mapping.title]), "text": " | ".join(texts),
            "category": _text(v.get(mapping.category)) if mapping.category else None, "image": None,
            **{a: _text(v.get(a)) for a in mapping.attrs}}
        job = _image_job(row, key, mapping, images_dir, table, report, role_of)
        if job is not None:
            jobs.append(job)
    return products, is_int, jobs


def _extra_image_jobs(extras: list[ExtraImage], products: dict, stems: dict, is_int: bool, images_dir: Path,
                      report: Report) -> list[ImageJob]:
    """Extra images (from presets) of known products, in a fixed order, numbered per product."""
    report.extra_images_read = len(extras)
    images_root = Path(os.path.realpath(images_dir))
    by_product: dict[Any, list[ImageJob]] = {}
    for e in extras:
        key = _coerce_key(e.product_id, is_int)
        if key not in products:
            report.add("unknown_product", DROPPED, e.file, e.row, "product_id",
                       f"extra image {e.path!r} names product id {e.product_id!r}, which is not in the catalog; "
                       f"dropped", row_label="line")
            continue
        path = _inside(images_root, e.path)
        if path is None:
            report.add("image_outside_images_dir", DROPPED, e.file, e.row, "image",
                       f"image path outside the images dir: {e.path!r}; extra image dropped", row_label="line")
            continue
        by_product.setdefault(key, []).append(ImageJob(
            key, e.path, path, "extra", e.split, e.file, e.row, "image", "line"))
    jobs = []
    for key in sorted(by_product):
        js = sorted(by_product[key], key=lambda j: (j.split or "", j.ref))
        for n, j in enumerate(js, 1):
            j.dest = f"images/{stems[key]}.x{n:04d}"
        jobs += js
    return jobs


def _field(col: str, role_of: dict[str, str]) -> str:
    role = role_of.get(col)
    return f"{role} (column {col!r})" if role and role != col else repr(col)


def _coerce_key(pid: str, is_int: bool):
    pid = str(pid).strip()
    if is_int:
        try:
            return int(pid)
        except ValueError:
            return None
    return pid


def _image_job(row: RawRow, key, mapping: Mapping, images_dir: Path, table: Table, report: Report,
               role_of) -> ImageJob | None:
    if mapping.image:
        ref, field_ = _text(row.values.get(mapping.image)), _field(mapping.image, role_of)
    elif mapping.image_pattern:
        values = {c: (_text(row.values.get(c)) or "") for c in mapping.pattern_columns()}
        ref, field_ = mapping.image_pattern.format_map(values).strip() or None, f"image ({mapping.image_pattern!r})"
    else:
        return None  # a text-only catalog: nothing to report per row
    if ref is None:
        report.add("no_image", KEPT, table.file, row.number, field_, "image cell is empty; kept without image")
        return None
    path = None
    if not _is_url(ref):
        path = _inside(Path(os.path.realpath(images_dir)), ref)
        if path is None:
            report.add("image_outside_images_dir", KEPT, table.file, row.number, field_,
                       f"image path outside the images dir: {ref!r}; kept without image")
            return None
    return ImageJob(key, ref, path, "primary", None, table.file, row.number, field_, table.row_label)


def _unique_stems(keys: Iterable) -> dict:
    """Product id -> image file stem. Two ids could (very rarely) give the same stem, or the same stem up to
    case: the later ones, in id order, get a number."""
    stems, seen = {}, set()
    for key in sorted(keys):
        base = stem = _safe_stem(key)
        n = 1
        while stem.lower() in seen:
            n += 1
            stem = f"{base}_{n}"
        seen.add(stem.lower())
        stems[key] = stem
    return stems


def _run_image_jobs(jobs, out_root, max_side, max_pixels, workers, fetch_timeout, max_image_bytes,
                    progress, allow_private_urls=False) -> list[ImageOutcome]:
    """Validate and copy images on a thread pool (Pillow decodes with the GIL released)."""
    import httpx

    workers = workers or min(16, 2 * (os.cpu_count() or 2))
    client = None
    if any(j.path is None for j in jobs):
        client = httpx.Client(timeout=fetch_timeout, follow_redirects=False,  # each hop is checked: _fetch
                              limits=httpx.Limits(max_connections=workers))
    large_decode = threading.Lock()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = []
            chunk = 256  # submit in chunks so progress moves and memory stays flat
            for start in range(0, len(jobs), chunk):
                batch = jobs[start:start + chunk]
                outcomes.extend(pool.map(lambda j: _process_image(j, out_root, max_side, max_pixels, client,
                                                                   max_image_bytes, allow_private_urls,
                                                                   large_decode), batch))
                if progress:
                    progress(len(outcomes), len(jobs))
    finally:
        if client is not None:
            client.close()
    if progress and not jobs:
        progress(0, 0)
    return outcomes


def _write_tables(root: Path, products: dict, image_rows: list, digests: list, mapping: Mapping,
                  is_int: bool) -> str:
    """catalog.parquet + images.parquet, sorted and typed; returns the content hash of the catalog."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted(products)
    rows = [products[k] for k in keys]
    id_type = pa.int64() if is_int else pa.string()
    arrays = {"id": pa.array(keys, id_type)}
    for col in ("title", "text", "category", "image"):
        arrays[col] = pa.array([r[col] for r in rows], pa.string())
    for a in mapping.attrs:
        typ, values = _infer_type([r[a] for r in rows])
        arrays[a] = pa.array(values, typ)
    pq.write_table(pa.table(arrays), root / CATALOG_FILE)

    role_order = {"primary": 0, "extra": 1}
    image_rows = sorted(image_rows, key=lambda r: (r[0], role_order[r[2]], r[1]))
    pq.write_table(pa.table({
        "product_id": pa.array([r[0] for r in image_rows], id_type),
        "image": pa.array([r[1] for r in image_rows], pa.string()),
        "role": pa.array([r[2] for r in image_rows], pa.string()),
        "split": pa.array([r[3] for r in image_rows], pa.string()),
    }), root / IMAGES_FILE)

    h = hashlib.sha256()
    for fname in (CATALOG_FILE, IMAGES_FILE):
        h.update((root / fname).read_bytes())
    for rel, digest in sorted(digests):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def _nothing_left_message(report: Report) -> str:
    counts = report.counts()
    lines = [f"{report.source}: no usable product left ({report.rows_read} rows read); nothing written."]
    for code, ps in report.by_code().items():
        lines.append(f"  {code}: {counts[code]}, e.g. {ps[0].message}")
    return "\n".join(lines)
