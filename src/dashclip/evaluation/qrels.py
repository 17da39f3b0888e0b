"""Queries and their graded labels (qrels), in the ../shared/data/fashion-queries format.

Queries are dicts with at least "qid" and "query" ("style" groups them). Labels (qrels) are
{qid: {product_id: label}} with label > 0 only; every other product is label 0. They come from a
query's predicate through the dataset's own labels.py (imported by path, never copied:
`predicate_qrels`, `fashion_qrels`) or from a qrels TSV (`read_qrels_tsv`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import check_unique_qids, iter_jsonl
from ..labeling.grades import GRADE_VALUES
from ..settings import is_heldout_qid, load_labels_module  # noqa: F401  (also public here)



def load_queries(path: str | Path, heldout_only: bool = False) -> list[dict]:
    """Read a query .jsonl file: every line needs a non-empty "qid" and "query"; qids are unique.
    `heldout_only` keeps the held-out queries (settings.is_heldout_qid: qid number divisible by 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path}")
    queries, lines = [], []
    for i, q in iter_jsonl(path):
        where = f"{path}:{i}"
        if not isinstance(q, dict):
            raise ValueError(f"{where}: a query must be a JSON object")
        for key in ("qid", "query"):
            if not isinstance(q.get(key), str) or not q[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string")
        lines.append(i)
        queries.append(q)
    check_unique_qids(zip(lines, (q["qid"] for q in queries)), path)
    if not queries:
        raise ValueError(f"{path}: no queries")
    if heldout_only:
        queries = [q for q in queries if is_heldout_qid(q["qid"])]
    return queries


def labels_frame(products: pd.DataFrame) -> pd.DataFrame:
    """Catalog products in the column names of the fashion-queries labels.py (articleType is the
    catalog's category unless the catalog keeps an articleType attribute)."""
    frame = products.copy()
    if "articleType" not in frame.columns:
        frame["articleType"] = frame["category"]
    frame["productDisplayName"] = frame["title"]
    frame["has_image"] = frame["image"].notna().astype(int)
    for col in ("gender", "baseColour", "usage", "season"):
        if col not in frame.columns:
            frame[col] = None
    return frame.reset_index(drop=True)


def predicate_qrels(queries: list[dict], products: pd.DataFrame, labels_module) -> dict[str, dict]:
    """Labels of every query from its predicate, by the labels module's own `label_series`.
    Only products with an image are labelled (the dataset's rule: has_image == 1), the same products
    every system ranks. Queries are validated against the catalog first (unknown keys or attribute
    values are errors)."""
    frame = labels_frame(products[products["image"].notna()])
    ids = frame["id"].to_numpy()
    out = {}
    reference = None
    for q in queries:
        where = f"query {q.get('qid')!r}"
        try:
            labels_module.validate_query(q, where, frame)
        except ValueError as e:
            # A value missing from a sample of the catalog is no typo if the dataset's own catalog has it:
            # the query just has fewer relevant products here. Typos stay errors.
            if "not found in catalog" not in str(e) or not hasattr(labels_module, "load_catalog"):
                raise
            if reference is None:
                try:
                    reference = labels_module.load_catalog()
                except (OSError, ValueError):
                    raise e from None
            labels_module.validate_query(q, where, reference)
        lab = labels_module.label_series(q, frame).to_numpy()
        keep = lab > 0
        out[q["qid"]] = dict(zip(ids[keep].tolist(), lab[keep].astype(int).tolist()))
    return out


def read_qrels_tsv(path: str | Path, id_type=int) -> dict[str, dict]:
    """qid<TAB>product_id<TAB>label with a header line (the labels.py output). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qrels file not found: {path}")
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["qid", "product_id", "label"]:
            raise ValueError(f"{path}:1: header must be 'qid<TAB>product_id<TAB>label', got {header}")
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if len(cells) < 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(cells)}")
            try:
                pid, label = id_type(cells[1]), int(cells[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad product_id {cells[1]!r} or label {cells[2]!r}") from None
            if label not in GRADE_VALUES:
                raise ValueError(f"{path}:{lineno}: label must be 0, 1 or 2, got {label}")
            if label > 0:
                out.setdefault(cells[0], {})[pid] = label
    return out


def fashion_qrels(queries: list[dict], catalog=None, labels_py: str | Path | None = None) -> dict[str, dict]:
    """Labels of fashion-queries `queries` over the fashion catalog: an imported dashclip `catalog`
    (Catalog or dir) when given, else the dataset's catalog.csv as its labels.py reads it. Both
    give the same labels (products with an image only)."""
    from ..settings import dataset_dir

    module = load_labels_module(labels_py or dataset_dir("fashion-queries") / "labels.py")
    if catalog is None:
        frame = module.load_catalog()
        out = {}
        for q in queries:
            module.validate_query(q, f"query {q.get('qid')!r}", frame)
            lab = module.label_series(q, frame).to_numpy()
            keep = lab > 0
            out[q["qid"]] = dict(zip(frame["id"].to_numpy()[keep].tolist(), lab[keep].astype(int).tolist()))
        return out
    from ..data.catalog import Catalog

    catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
    return predicate_qrels(queries, catalog.products, module)
