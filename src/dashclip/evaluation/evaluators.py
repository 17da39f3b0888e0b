"""Downstream evaluators. Each is a plain callable that returns a metrics dict (sentence-transformers
style): build it once with the data, call it with the thing to evaluate. Add your own the same way.

    RetrievalEvaluator(queries, qrels)(scorer)          NDCG@10, Recall@K, MRR, P@10, overall and per style
    RelevanceEvaluator(queries, qrels)(scorer)          ROC-AUC of the query-product score vs graded labels
    CategoryEvaluator.from_catalog(catalog)(embeddings) aisle probes: logistic regression and kNN
    GroceryEvaluator(catalog)(model)                    in-store photo -> product, top-1/top-5, fine/coarse

A *scorer* is anything with `name`, `product_ids` and `scores(queries) -> [Q, N]` (see baselines.py).
*embeddings* is anything with `ids` and `vectors` ({"fused", "image", "text"} -> [N, D] float32),
such as `dashclip.models.embeddings.load_embeddings(dir)`.

Queries are dicts with at least "qid" and "query" ("style" groups them). Labels (qrels) are
{qid: {product_id: label}} with label > 0 only; every other product is label 0. They come from a
query's predicate through the labels.py of ../shared/data/fashion-queries (imported by path, not
copied: `predicate_qrels`) or from a qrels TSV (`read_qrels_tsv`).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import read_jsonl
from ..settings import is_heldout_qid
from .metrics import TOP, aggregate, query_metrics, tiebreak_order, top_k

RECALL_KS = (1, 5, 10, 20, 50, 100)

# ---------------------------------------------------------------------------------------------------
# Queries and labels


def load_queries(path: str | Path, heldout_only: bool = False) -> list[dict]:
    """Read a query .jsonl file: every line needs a non-empty "qid" and "query"; qids are unique.
    `heldout_only` keeps the held-out queries (settings.is_heldout_qid: qid number divisible by 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path}")
    queries, seen = [], set()
    for i, q in enumerate(read_jsonl(path), 1):
        where = f"{path}: query {i}"
        if not isinstance(q, dict):
            raise ValueError(f"{where}: a query must be a JSON object")
        for key in ("qid", "query"):
            if not isinstance(q.get(key), str) or not q[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string")
        if q["qid"] in seen:
            raise ValueError(f"{where}: duplicate qid {q['qid']!r}")
        seen.add(q["qid"])
        queries.append(q)
    if not queries:
        raise ValueError(f"{path}: no queries")
    if heldout_only:
        queries = [q for q in queries if is_heldout_qid(q["qid"])]
    return queries


def load_labels_module(path: str | Path):
    """Import a labels.py (e.g. ../shared/data/fashion-queries/labels.py) by path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels module not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_dashclip_labels_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    Queries are validated against the catalog first (unknown keys or attribute values are errors)."""
    frame = labels_frame(products)
    ids = frame["id"].to_numpy()
    out = {}
    for q in queries:
        labels_module.validate_query(q, f"query {q.get('qid')!r}", frame)
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
            if label not in (0, 1, 2):
                raise ValueError(f"{path}:{lineno}: label must be 0, 1 or 2, got {label}")
            if label > 0:
                out.setdefault(cells[0], {})[pid] = label
    return out


# ---------------------------------------------------------------------------------------------------
# Query -> product retrieval


def _score_batches(scorer, queries: list[dict], batch: int = 64):
    texts = [q["query"] for q in queries]
    for i in range(0, len(texts), batch):
        yield i, scorer.scores(texts[i:i + batch])


class RetrievalEvaluator:
    """Rank the whole catalog per query (top 100, `metrics.top_k`), score it with the README metrics.

    Returns {"system", "n_queries", "all": {ndcg@10, recall@100, mrr, p@10, recall@K...},
    "by_style": {...}}; `rankings` keeps the last run's top 100 ids per qid."""

    def __init__(self, queries: list[dict], qrels: Mapping[str, Mapping], recall_ks: Sequence[int] = RECALL_KS,
                 name: str = "retrieval"):
        self.queries, self.qrels, self.recall_ks, self.name = queries, qrels, tuple(recall_ks), name
        self.rankings: dict[str, list] = {}

    def __call__(self, scorer) -> dict:
        ids = np.asarray(scorer.product_ids, dtype=object)
        tiebreak = tiebreak_order(len(ids))
        per_query, self.rankings = {}, {}
        for start, scores in _score_batches(scorer, self.queries):
            for j, rows in enumerate(top_k(scores, TOP, tiebreak)):
                q = self.queries[start + j]
                ranked = ids[rows].tolist()
                self.rankings[q["qid"]] = ranked
                per_query[q["qid"]] = query_metrics(ranked, self.qrels.get(q["qid"], {}), self.recall_ks)
        styles = {q["qid"]: q.get("style", "all") for q in self.queries}
        out = aggregate(per_query, styles)
        return {"system": getattr(scorer, "name", "?"), "n_queries": out["n_queries"], "all": out["all"],
                "by_style": out.get("by_group", {})}


class RelevanceEvaluator:
    """ROC-AUC of the query-product score against graded labels: label 2 vs 0, and >= 1 vs 0.

    Every catalog product is a pair for every query (unlabelled = 0). "mean_*" averages each query's
    AUC (queries without both classes are skipped); "pooled_*" ranks all pairs together."""

    def __init__(self, queries: list[dict], qrels: Mapping[str, Mapping], name: str = "relevance"):
        self.queries, self.qrels, self.name = queries, qrels, name

    def __call__(self, scorer) -> dict:
        from sklearn.metrics import roc_auc_score

        col = {pid: i for i, pid in enumerate(scorer.product_ids)}
        per = {"2_vs_0": [], "1+_vs_0": []}
        pooled = {"2_vs_0": ([], []), "1+_vs_0": ([], [])}
        for start, scores in _score_batches(scorer, self.queries):
            for j, s in enumerate(scores):
                labels = np.zeros(len(col), dtype=np.int8)
                for pid, lab in self.qrels.get(self.queries[start + j]["qid"], {}).items():
                    if pid in col:
                        labels[col[pid]] = lab
                for key, positive in (("2_vs_0", labels == 2), ("1+_vs_0", labels >= 1)):
                    keep = positive | (labels == 0)
                    y, x = positive[keep], s[keep]
                    if 0 < y.sum() < len(y):
                        per[key].append(roc_auc_score(y, x))
                    pooled[key][0].append(y)
                    pooled[key][1].append(x.astype(np.float32))
        out = {"system": getattr(scorer, "name", "?"), "n_queries": len(self.queries)}
        for key in per:
            out[f"mean_auc_{key}"] = float(np.mean(per[key])) if per[key] else float("nan")
            y, x = np.concatenate(pooled[key][0]), np.concatenate(pooled[key][1])
            out[f"pooled_auc_{key}"] = float(roc_auc_score(y, x)) if 0 < y.sum() < len(y) else float("nan")
        return out


# ---------------------------------------------------------------------------------------------------
# Aisle (category) prediction from product embeddings


def is_test_product(pid, test_fraction: float) -> bool:
    """Deterministic split by product: a product is in the test set when the hash of its id falls
    in the first `test_fraction` of the range (same answer on every machine and run)."""
    h = int(hashlib.md5(str(pid).encode("utf-8")).hexdigest()[:8], 16)
    return h < test_fraction * 0x100000000


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 10,
                n_classes: int | None = None, batch: int = 2048) -> np.ndarray:
    """Cosine kNN (vectors L2-normalised): the class with the largest summed similarity among the
    k nearest training products; equal sums go to the lower class index."""
    n_classes = int(n_classes or train_y.max() + 1)
    k = min(k, len(train_x))
    tiebreak = tiebreak_order(len(train_x))
    out = np.empty(len(test_x), dtype=np.int64)
    for i in range(0, len(test_x), batch):
        sims = test_x[i:i + batch] @ train_x.T
        nearest = top_k(sims, k, tiebreak)
        votes = np.zeros((len(sims), n_classes))
        rows = np.arange(len(sims))[:, None]
        np.add.at(votes, (np.broadcast_to(rows, nearest.shape), train_y[nearest]),
                  np.take_along_axis(sims, nearest, 1))
        out[i:i + batch] = votes.argmax(1)
    return out


class CategoryEvaluator:
    """Predict each label column (e.g. articleType, subCategory) from product embeddings with a
    logistic-regression probe and a kNN classifier; accuracy and macro-F1 per embedding kind.

    Split by product (`is_test_product`); test products whose class has no training product are left
    out and counted. The probe trains on at most `max_train` products (a fixed subsample) to stay fast
    on 2 cores; kNN uses every training product. `predictions[(kind, column, method)]` keeps
    (y_true, y_pred, class names) of the last run, for the confusion-matrix plot."""

    def __init__(self, product_ids: Sequence, labels: Mapping[str, Sequence], test_fraction: float = 0.2,
                 knn_k: int = 10, max_train: int = 10_000, kinds: Sequence[str] = ("fused", "image", "text"),
                 name: str = "category"):
        self.product_ids = list(product_ids)
        self.labels = {c: np.asarray(v, dtype=object) for c, v in labels.items()}
        self.test_fraction, self.knn_k, self.max_train, self.kinds = test_fraction, knn_k, max_train, kinds
        self.name = name
        self.predictions: dict[tuple, tuple] = {}

    @classmethod
    def from_catalog(cls, catalog, columns: Sequence[str] = ("category", "subCategory"), **kw) -> "CategoryEvaluator":
        products = catalog.products
        present = [c for c in columns if c in products.columns]
        if not present:
            raise ValueError(f"{catalog.root}: none of the label columns {list(columns)} is in the catalog")
        return cls(products["id"].tolist(), {c: products[c].tolist() for c in present}, **kw)

    def __call__(self, embeddings) -> dict:
        row = {pid: i for i, pid in enumerate(embeddings.ids)}
        missing = [pid for pid in self.product_ids if pid not in row]
        keep = np.array([pid in row for pid in self.product_ids])
        idx = np.array([row[pid] for pid in self.product_ids if pid in row], dtype=np.int64)
        ids = [pid for pid in self.product_ids if pid in row]
        is_test = np.array([is_test_product(pid, self.test_fraction) for pid in ids])
        out: dict = {"n_products": len(ids), "n_without_embedding": len(missing)}
        for column, values in self.labels.items():
            y_all = values[keep]
            known = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in y_all])
            train = known & ~is_test
            classes = np.array(sorted({str(v) for v in y_all[train]}))
            class_index = {c: i for i, c in enumerate(classes)}
            test = known & is_test & np.array([str(v) in class_index for v in y_all])
            y = np.array([class_index.get(str(v), -1) for v in y_all])
            info = {"n_classes": len(classes), "n_train": int(train.sum()), "n_test": int(test.sum()),
                    "n_test_unseen_class": int((known & is_test).sum() - test.sum())}
            sub = np.flatnonzero(train)
            if len(sub) > self.max_train:  # fixed subsample for the probe
                sub = np.sort(np.random.default_rng(0).choice(sub, self.max_train, replace=False))
            for kind in self.kinds:
                if kind not in embeddings.vectors:
                    continue
                x = np.asarray(embeddings.vectors[kind], dtype=np.float32)[idx]
                res = {}
                for method in ("logreg", "knn"):
                    if method == "logreg":
                        pred = self._logreg(x[sub], y[sub], x[test])
                    else:
                        pred = knn_predict(x[train], y[train], x[test], self.knn_k, len(classes))
                    res[method] = _classification_scores(y[test], pred)
                    self.predictions[(kind, column, method)] = (y[test], pred, classes)
                out.setdefault(kind, {})[column] = {**info, **res}
        return out

    @staticmethod
    def _logreg(x: np.ndarray, y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:  # one class: the probe can only say that
            return np.full(len(test_x), y[0] if len(y) else 0)
        # Unit vectors give small logits: C=10 lets the probe fit them.
        clf = LogisticRegression(C=10.0, max_iter=300)
        clf.fit(x, y)
        return clf.predict(test_x)


def _classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    # Macro-F1 over the classes present in the test set.
    return {"accuracy": float((y_true == y_pred).mean()),
            "macro_f1": float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                                       zero_division=0))}


# ---------------------------------------------------------------------------------------------------
# Grocery transfer: in-store photos -> products


def topk_hits(ranked_labels: np.ndarray, truth: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of rows whose true label is among the first k *distinct* labels of its ranking."""
    hits = {k: 0 for k in ks}
    for row, t in zip(ranked_labels, truth):
        distinct = list(dict.fromkeys(row.tolist()))
        for k in ks:
            hits[k] += t in distinct[:k]
    return {k: hits[k] / max(len(truth), 1) for k in ks}


class GroceryEvaluator:
    """Match real in-store photos (catalog images with role "extra" and the given split) against every
    product, by cosine of `model.encode_image(photo)` with three product embeddings: fused
    (`encode_product(text, iconic image)`), text-only (`encode_text`) and iconic image-only
    (`encode_image`). Top-1/top-5 accuracy for the fine class (the product) and the coarse class (the
    product's category; a ranking of products becomes a ranking of its distinct categories)."""

    def __init__(self, catalog, split: str = "test", batch_size: int = 64, max_photos: int | None = None,
                 name: str = "grocery"):
        self.catalog, self.split, self.batch_size, self.name = catalog, split, batch_size, name
        images = catalog.images
        photos = images[(images["role"] == "extra") & (images["split"] == split)]
        photos = photos[photos["product_id"].isin(set(catalog.products["id"]))]
        if max_photos is not None:
            photos = photos.iloc[:max_photos]
        if photos.empty:
            raise ValueError(f"{catalog.root}: no in-store photos (images with role 'extra', split {split!r})")
        no_image = catalog.products.loc[catalog.products["image"].isna(), "id"].tolist()
        if no_image:  # the fused and image-only targets need an iconic image for every product
            raise ValueError(f"{catalog.root}: product {no_image[0]!r} has no image ({len(no_image)} products)")
        self.photos = photos.reset_index(drop=True)

    def _images(self, rels: list):
        from ..data.images import load_image

        return [load_image(self.catalog.image_path(r)) for r in rels]

    def _encode_images(self, model, rels: list, progress=None) -> np.ndarray:
        from .baselines import to_numpy

        parts = []
        for i in range(0, len(rels), self.batch_size):
            parts.append(to_numpy(model.encode_image(self._images(rels[i:i + self.batch_size]))))
            if progress is not None:
                progress(len(rels[i:i + self.batch_size]))
        return np.concatenate(parts)

    def __call__(self, model, progress=None) -> dict:
        import torch

        from .baselines import to_numpy

        products = self.catalog.products
        texts = self.catalog.product_texts()
        with torch.inference_mode():
            iconic = self._images(products["image"].tolist())
            targets = {"fused": to_numpy(model.encode_product(texts, iconic)),
                       "text": to_numpy(model.encode_text(texts)),
                       "image": to_numpy(model.encode_image(iconic))}
            photos = self._encode_images(model, self.photos["image"].tolist(), progress)
        pid = products["id"].to_numpy()
        coarse = products["category"].astype(str).to_numpy()
        coarse_of = dict(zip(pid.tolist(), coarse.tolist()))
        truth_fine = self.photos["product_id"].to_numpy()
        truth_coarse = np.array([coarse_of[p] for p in truth_fine.tolist()])
        out = {"split": self.split, "n_photos": len(self.photos), "n_products": len(products),
               "n_coarse_classes": int(len(set(coarse.tolist())))}
        for kind, vectors in targets.items():
            ranked = top_k(photos @ vectors.T, len(products))
            fine = topk_hits(pid[ranked], truth_fine)
            crs = topk_hits(coarse[ranked], truth_coarse)
            out[kind] = {"fine_top1": fine[1], "fine_top5": fine[5], "coarse_top1": crs[1], "coarse_top5": crs[5]}
        return out
