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
                            image_fetch_failed (URL), image_fetch_skipped (a URL not tried: the first 32
                            downloads could not reach their hosts and none had, so the network looks down)
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

The steps live in their own modules: `tables.py` reads the file into rows, `mapping.py` resolves the source
and checks the mapping against the columns, `report.py` collects the problems, `image_copy.py` fetches,
validates and copies the images. This module runs them in order and writes the catalog dir.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..clihelp import UserError
from ..io import atomic_dir, mark_output_dir, prepare_output_dir, write_json, write_text
from ..settings import runs_dir
from .catalog import CATALOG_FILE, IMAGES_FILE, MANIFEST_FILE
from .image_copy import (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_SIDE, IMPORT_MAX_PIXELS, ImageJob, inside, is_url,
                         run_image_jobs, unique_stems)
from .mapping import check_columns, resolve_source
from .report import DROPPED, KEPT, Report
from .rows import ExtraImage, Mapping, RawRow, Table

INT64_MAX = 2**63 - 1
# Titles that spreadsheets and pandas write for "no value": a product called "NA" is a missing title.
MISSING_TITLES = frozenset({"na", "n/a", "nan", "null", "none", "-"})


class NothingToImportError(UserError):
    """No usable product is left after validation. `report` holds what was found."""

    def __init__(self, message: str, report: "Report"):
        super().__init__(message)
        self.report = report


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
    table, mapping, images_dir, preset, extras = resolve_source(source, mapping, preset, fmt, encoding)
    name = name or preset or Path(table.file).stem
    inputs = [table.file, *sorted({e.file for e in extras})]
    if mapping.images_dir and (mapping.image or mapping.image_pattern or extras):
        inputs.append(images_dir)  # the folder the user named; the default (the file's own folder) may hold out
    out = prepare_output_dir(out if out is not None else runs_dir() / "catalogs" / name, "catalog",
                             inputs=inputs, overwrite=overwrite, check_only=True)  # atomic_dir replaces it whole
    report = Report(source=table.file, row_label=table.row_label, rows_read=len(table.rows))
    mapping = check_columns(table, mapping, report)

    products, is_int, jobs = _rows_to_products(table, mapping, images_dir, report, encoding)
    stems = unique_stems(products)
    for job in jobs:
        job.dest = f"images/{stems[job.product_key]}"
    jobs += _extra_image_jobs(extras, products, stems, is_int, images_dir, report)

    if not products:
        report.seconds = time.perf_counter() - started
        raise NothingToImportError(_nothing_left_message(report), report)

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        outcomes = run_image_jobs(jobs, tmp, max_side, max_pixels, workers, fetch_timeout,
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
        path = inside(images_root, e.path)
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
    if not is_url(ref):
        path = inside(Path(os.path.realpath(images_dir)), ref)
        if path is None:
            report.add("image_outside_images_dir", KEPT, table.file, row.number, field_,
                       f"image path outside the images dir: {ref!r}; kept without image")
            return None
    return ImageJob(key, ref, path, "primary", None, table.file, row.number, field_, table.row_label)


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
