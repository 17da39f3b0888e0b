"""Stage 2's data: the grade rows it trains on (`select_grades`), indexed for batch building
(`GradeTable`), the batches themselves (`Batch`: products, their query bank and the grade matrix) and
the static hard-negative miner. No model code: `training/align.py` is the task that trains on them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from ..data.ids import coerce_id_column
from ..losses.qcc import UNLABELED
from ..text import query_key

GRADE_COLUMNS = ("qid", "query", "product_id", "grade", "confidence")


class BankSizes(Protocol):
    """How many queries of each kind a batch's bank holds per product (an `AlignConfig` is one)."""
    positives_per_product: int
    graded_negatives: int
    hard_negatives: int


def select_grades(grades: pd.DataFrame, min_confidence: float = 0.5,
                  exclude_queries: set[str] | frozenset = frozenset(), source: str = "grades") -> tuple[pd.DataFrame, dict]:
    """The grade rows Stage 2 trains on, and counts of what was left out and why.

    Drops rows below `min_confidence`, and every row whose query text is one of `exclude_queries`
    (the held-out evaluation queries: they must never reach a training step). When one (query,
    product) pair is graded more than once, the most confident grade wins (seed grades carry 1.0).
    A malformed row is an error naming the row and field, never skipped silently.
    """
    from ..labeling.grades import check_grades

    df = check_grades(grades, source, required=GRADE_COLUMNS)
    df = df[list(GRADE_COLUMNS) + [c for c in ("labeler",) if c in df.columns]].copy()
    df["key"] = df["query"].map(query_key)
    stats = {"rows_in": int(len(df))}
    low = df["confidence"] < min_confidence
    stats["dropped_low_confidence"] = int(low.sum())
    df = df[~low]
    excluded = df["key"].isin({query_key(q) for q in exclude_queries})
    stats["dropped_heldout_query"] = int(excluded.sum())
    df = df[~excluded]
    n = len(df)
    df = (df.sort_values("confidence", ascending=False, kind="stable")
            .drop_duplicates(["key", "product_id"], keep="first"))
    stats["dropped_duplicate_pair"] = int(n - len(df))
    stats["rows_kept"] = int(len(df))
    return df.reset_index(drop=True), stats


@dataclass
class Batch:
    """One Stage 2 batch: B product rows (into the product embedding table), the bank of Q query
    indices (into `GradeTable.queries`) and the [B, Q] grade matrix for the QCC loss."""

    product_rows: np.ndarray   # [B] int64
    query_index: np.ndarray    # [Q] int64
    grades: np.ndarray         # [B, Q] int8: 2/1/0, -1 unlabeled, -2 ignore


@dataclass
class GradeTable:
    """Grades indexed for fast batch building.

    `queries[j]` is the text of query j; product rows index the product embedding table whose ids
    are `product_ids`. Per product row, `relevant[row]` / `zeros[row]` hold (query, grade) pairs.
    """

    queries: list[str]
    product_ids: np.ndarray
    relevant: dict[int, dict[int, int]]          # product row -> {query: grade >= 1}
    zeros: dict[int, np.ndarray]                 # product row -> queries graded 0
    positives_of_query: list[np.ndarray]         # query -> product rows where it is a positive
    stats: dict = field(default_factory=dict)

    @classmethod
    def build(cls, grades: pd.DataFrame, product_ids, positive_grades: tuple[int, ...] = (2,),
              source: str = "grades") -> "GradeTable":
        """Index selected grade rows (see `select_grades`) against the product table `product_ids`.

        `positive_grades` are the grades a product can be sampled for (2, plus 1 when grade 1 has a
        weight). Rows for products missing from the product table are counted, not silently lost."""
        product_ids = np.asarray(product_ids)
        row_of = pd.Series(np.arange(len(product_ids)), index=pd.Index(product_ids))
        if not row_of.index.is_unique:
            raise ValueError(f"{source}: the product table has duplicate ids")
        pid = coerce_id_column(grades["product_id"], pd.api.types.is_integer_dtype(row_of.index.dtype))
        rows = row_of.reindex(pid.to_numpy()).to_numpy()
        known = ~pd.isna(rows)
        stats = {"rows": int(len(grades)), "unknown_product_rows": int((~known).sum())}
        if stats["unknown_product_rows"]:
            example = grades["product_id"].to_numpy()[~known][0]
            stats["unknown_product_example"] = str(example)
        df = pd.DataFrame({"row": rows[known].astype(np.int64), "key": grades["key"].to_numpy()[known],
                           "query": grades["query"].to_numpy()[known], "grade": grades["grade"].to_numpy()[known]})
        keys, first = np.unique(df["key"].to_numpy(), return_index=True)
        texts = df["query"].to_numpy()[first].tolist()
        qindex = pd.Series(np.arange(len(keys)), index=keys)
        df["q"] = qindex.reindex(df["key"].to_numpy()).to_numpy()

        relevant: dict[int, dict[int, int]] = {}
        rel = df[df["grade"] >= 1]
        for r, q, g in zip(rel["row"].to_numpy(), rel["q"].to_numpy(), rel["grade"].to_numpy()):
            relevant.setdefault(int(r), {})[int(q)] = int(g)
        zero = df[df["grade"] == 0]
        zeros = {int(r): g["q"].to_numpy() for r, g in zero.groupby("row")}
        pos = df[df["grade"].isin(positive_grades)]
        by_q = {int(q): g["row"].to_numpy() for q, g in pos.groupby("q")}
        positives_of_query = [np.unique(by_q.get(j, np.zeros(0, np.int64))) for j in range(len(texts))]
        stats.update(queries=len(texts), trainable_queries=sum(len(p) > 0 for p in positives_of_query),
                     products=len({int(r) for r in df["row"].to_numpy()}),
                     positive_pairs=int(len(pos)), grade0_pairs=int(len(zero)))
        if stats["trainable_queries"] == 0:
            raise ValueError(f"{source}: no query has a relevant product (grade {'/'.join(map(str, positive_grades))}) "
                             f"in the product table after filtering: nothing to train on")
        return cls(texts, product_ids, relevant, zeros, positives_of_query, stats)

    def examples(self, pairs_per_query: int, seed: int = 0) -> np.ndarray:
        """The training examples: [N, 2] (query, product row) positive pairs, up to `pairs_per_query`
        per query (a fixed random subset), so that broad queries do not drown narrow ones."""
        rng = np.random.default_rng([seed, 1])
        out = []
        for q, rows in enumerate(self.positives_of_query):
            if len(rows) == 0:
                continue
            take = rows if len(rows) <= pairs_per_query else rng.choice(rows, pairs_per_query, replace=False)
            out.append(np.stack([np.full(len(take), q), take], axis=1))
        return np.concatenate(out).astype(np.int64)

    def make_batch(self, pairs: np.ndarray, config: BankSizes, rng: np.random.Generator,
                   miner: "HardNegativeMiner | None" = None,
                   positive_grades: tuple[int, ...] = (2,)) -> Batch:
        """Build the batch around anchor pairs [n, 2] (query, product row); see the module docstring.

        A product drawn twice appears once, with both anchor queries in the bank."""
        products: list[int] = []
        anchors: dict[int, list[int]] = {}
        for q, r in pairs.tolist():
            if r not in anchors:
                anchors[r] = []
                products.append(r)
            anchors[r].append(q)
        bank: dict[int, int] = {}

        def add(q) -> None:
            q = int(q)
            if q not in bank:
                bank[q] = len(bank)

        for r in products:
            for q in anchors[r]:
                add(q)
        for r in products:
            extra = config.positives_per_product - len(anchors[r])
            rel = [j for j, g in self.relevant.get(r, {}).items() if g in positive_grades and j not in anchors[r]]
            if rel and extra > 0:
                for j in rng.choice(rel, size=min(len(rel), extra), replace=False):
                    add(j)
            z = self.zeros.get(r)
            if z is not None and len(z) and config.graded_negatives:
                for j in rng.choice(z, size=min(len(z), config.graded_negatives), replace=False):
                    add(j)
        if miner is not None and config.hard_negatives:
            for j in miner.negatives(np.asarray(products), self, config.hard_negatives):
                add(j)
        query_index = np.fromiter(bank.keys(), dtype=np.int64, count=len(bank))
        grades = np.full((len(products), len(bank)), UNLABELED, dtype=np.int8)
        for i, r in enumerate(products):
            for j, g in self.relevant.get(r, {}).items():
                col = bank.get(j)
                if col is not None:
                    grades[i, col] = g
            z = self.zeros.get(r)
            if z is not None:
                for j in z.tolist():
                    col = bank.get(j)
                    if col is not None:
                        grades[i, col] = 0
        return Batch(np.asarray(products, dtype=np.int64), query_index, grades)


class HardNegativeMiner:
    """Mines, per product, the training queries most similar to it that are graded 0 or unlabeled.

    Similarity is measured once, with the query encoder as training starts (the Stage 1 text tower):
    static hard negatives, as DPR's BM25 negatives are, so that a resumed run mines exactly what the
    original run mined (the encoder at the start is the same; a later one would not be)."""

    def __init__(self, product_vectors: np.ndarray, query_vectors: np.ndarray):
        self.product_vectors = np.ascontiguousarray(product_vectors, dtype=np.float32)
        self.query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)

    def negatives(self, product_rows: np.ndarray, table: GradeTable, k: int) -> list[int]:
        if k == 0 or len(product_rows) == 0:
            return []
        sims = self.product_vectors[product_rows] @ self.query_vectors.T       # [B, n_queries]
        out = []
        extra = k + 16
        top = np.argpartition(-sims, min(extra, sims.shape[1] - 1), axis=1)[:, :extra]
        for i, r in enumerate(product_rows):
            order = top[i][np.argsort(-sims[i, top[i]])]
            rel = table.relevant.get(int(r), {})
            out.extend([int(j) for j in order if int(j) not in rel][:k])
        return out


def read_grades(grades) -> pd.DataFrame:
    """Grades from a DataFrame, a Parquet file or dir of shards, or a list of those (via `dashclip.labeling`)."""
    if isinstance(grades, pd.DataFrame):
        return grades
    if isinstance(grades, (list, tuple)):
        return pd.concat([read_grades(g) for g in grades], ignore_index=True)
    from ..labeling import load_grades

    return load_grades(grades)
