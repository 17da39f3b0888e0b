"""Downstream evaluators. Each is a plain callable that returns a metrics dict (sentence-transformers
style): build it once with the data, call it with the thing to evaluate. Add your own the same way.

    RetrievalEvaluator(queries, qrels)(scorer)          NDCG@10, Recall@K, MRR, P@10, overall and per style
    RelevanceEvaluator(queries, qrels)(scorer)          ROC-AUC of the query-product score vs graded labels
    CategoryEvaluator.from_catalog(catalog)(embeddings) aisle probes: logistic regression and kNN
    GroceryEvaluator(catalog)(model)                    in-store photo -> product, top-1/top-5, fine/coarse

A *scorer* is anything with `name`, `product_ids` and `scores(queries) -> [Q, N]` (see baselines.py).
*embeddings* is anything with `ids` and `vectors` ({"fused", "image", "text"} -> [N, D] float32),
such as `dashclip.models.embeddings.load_embeddings(dir)`.

Queries and labels (qrels: {qid: {product_id: label > 0}}) are read by `qrels.py`.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..data.catalog import is_missing
from ..ranking import expand_exactly, photo_vectors, tiebreak_order, top_k
from .metrics import TOP, evaluate_rankings

RECALL_KS = (1, 5, 10, 20, 50, 100)

# ---------------------------------------------------------------------------------------------------
# Query -> product retrieval


def _score_batches(scorer, queries: list[dict], batch: int = 64):
    texts = [q["query"] for q in queries]
    for i in range(0, len(texts), batch):
        yield i, scorer.scores(texts[i:i + batch])


class RetrievalEvaluator:
    """Rank the whole catalog per query (top 100, `baselines.rank`), score it with the README
    metrics (`metrics.evaluate_rankings`).

    Returns {"system", "n_queries", "overall": {ndcg@10, recall@100, mrr, p@10, recall@K...},
    "per_style": {style: {...}}}; `rankings` keeps the last run's top 100 ids per qid."""

    def __init__(self, queries: list[dict], qrels: Mapping[str, Mapping], recall_ks: Sequence[int] = RECALL_KS,
                 name: str = "retrieval"):
        self.queries, self.qrels, self.recall_ks, self.name = queries, qrels, tuple(recall_ks), name
        self.rankings: dict[str, list] = {}

    def __call__(self, scorer) -> dict:
        from .baselines import rank

        ranked = rank(scorer, [q["query"] for q in self.queries], TOP)
        self.rankings = {q["qid"]: r for q, r in zip(self.queries, ranked)}
        styles = {q["qid"]: q.get("style", "all") for q in self.queries}
        return {"system": getattr(scorer, "name", "?"),
                **evaluate_rankings(self.rankings, self.qrels, styles, recall_ks=self.recall_ks)}


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


def knn_neighbours(train_x: np.ndarray, test_x: np.ndarray, k: int = 10,
                   batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of the k nearest training vectors of each test vector (vectors
    L2-normalised), nearest first; equal similarities go to the lower index."""
    k = min(k, len(train_x))
    tiebreak = tiebreak_order(len(train_x))
    indices = np.empty((len(test_x), k), dtype=np.int64)
    sims = np.empty((len(test_x), k), dtype=np.float32)
    for i in range(0, len(test_x), batch):
        s = test_x[i:i + batch] @ train_x.T
        nearest = top_k(s, k, tiebreak)
        indices[i:i + batch], sims[i:i + batch] = nearest, np.take_along_axis(s, nearest, 1)
    return indices, sims


def knn_vote(neighbours: tuple[np.ndarray, np.ndarray], train_y: np.ndarray, n_classes: int) -> np.ndarray:
    """The class with the largest summed similarity among each row's neighbours (`knn_neighbours`);
    equal sums go to the lower class index."""
    indices, sims = neighbours
    votes = np.zeros((len(indices), n_classes))
    rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
    np.add.at(votes, (rows, train_y[indices]), sims)
    return votes.argmax(1)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 10,
                n_classes: int | None = None, batch: int = 2048) -> np.ndarray:
    """Cosine kNN (vectors L2-normalised): the class with the largest summed similarity among the
    k nearest training products; equal sums go to the lower class index."""
    n_classes = int(n_classes or train_y.max() + 1)
    return knn_vote(knn_neighbours(train_x, test_x, k, batch), train_y, n_classes)


class CategoryEvaluator:
    """Predict each label column (e.g. articleType, subCategory) from product embeddings with a
    logistic-regression probe and a kNN classifier; accuracy and macro-F1 per embedding kind.

    Split by product (`is_test_product`, or the given `test_ids`, e.g. the products Stage 1 held out);
    test products whose class has no training product are left out and counted. The probe trains on at most `max_train` products (a fixed subsample) to stay fast
    on 2 cores; kNN uses every training product. `predictions[(kind, column, method)]` keeps
    (y_true, y_pred, class names) of the last run, for the confusion-matrix plot. `from_catalog` takes the
    products with an image."""

    def __init__(self, product_ids: Sequence, labels: Mapping[str, Sequence], test_fraction: float = 0.2,
                 knn_k: int = 10, max_train: int = 10_000, kinds: Sequence[str] = ("fused", "image", "text"),
                 name: str = "category", test_ids: Iterable | None = None):
        self.product_ids = list(product_ids)
        self.test_ids = None if test_ids is None else set(test_ids)
        self.labels = {c: np.asarray(v, dtype=object) for c, v in labels.items()}
        self.test_fraction, self.knn_k, self.max_train, self.kinds = test_fraction, knn_k, max_train, kinds
        self.name = name
        self.predictions: dict[tuple, tuple] = {}

    @classmethod
    def from_catalog(cls, catalog, columns: Sequence[str] = ("category", "subCategory"), **kw) -> "CategoryEvaluator":
        products = catalog.products[catalog.products["image"].notna()]  # an embedding of a blank image says little
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
        is_test = np.array([pid in self.test_ids if self.test_ids is not None
                            else is_test_product(pid, self.test_fraction) for pid in ids], dtype=bool)
        out: dict = {"n_products": len(ids), "n_without_embedding": len(missing)}
        # The nearest training products of every test product, per kind and training set: label columns
        # with the same training products share them (most of the kNN time); `test` rows are looked up.
        all_test = np.flatnonzero(is_test)
        neighbours: dict[tuple, tuple] = {}
        for column, values in self.labels.items():
            y_all = values[keep]
            known = np.array([not is_missing(v) for v in y_all])
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
                        key = (kind, train.tobytes())
                        if key not in neighbours:
                            neighbours[key] = knn_neighbours(x[train], x[all_test], self.knn_k)
                        at = np.searchsorted(all_test, np.flatnonzero(test))
                        pred = knn_vote(tuple(a[at] for a in neighbours[key]), y[train], len(classes))
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
    product, by cosine of the photo's query embedding (`model.encode_photo`: the photo head after photo
    alignment, else the image embedding) with three product embeddings: fused
    (`encode_product(text, iconic image)`), text-only (`encode_text`) and iconic image-only
    (`encode_image`). Top-1/top-5 accuracy for the fine class (the product) and the coarse class (the
    product's category; a ranking of products becomes a ranking of its distinct categories).
    Each of `photo_image_weights` adds the mix a photo is served with (`ranking.photo_vectors`),
    reported as "fused+image <w>". Each m of `photo_expansions` adds every row again with the photo's vector
    moved toward its first m hits in that row's product vectors (`ranking.expand_exactly`: what
    `Searcher(photo_expansion=m)` serves),
    reported as "<row> expanded <m>".

    With `feature_cache_dir`, the photos' image-tower features go through the Stage 1 feature cache
    (`models.feature_cache`, float16): models that share an image tower (a model before and after
    Stage 1 with a frozen tower) and later runs encode the photos once. Photos that cannot be read
    are left out and counted (`n_photos_unreadable`)."""

    def __init__(self, catalog, split: str = "test", batch_size: int = 64, max_photos: int | None = None,
                 feature_cache_dir=None, name: str = "grocery", photo_image_weights=(), photo_expansions=()):
        self.catalog, self.split, self.batch_size, self.name = catalog, split, batch_size, name
        self.photo_image_weights = tuple(photo_image_weights)
        self.photo_expansions = tuple(int(m) for m in photo_expansions)
        self.feature_cache_dir = feature_cache_dir
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

    def _encode_photos(self, model, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """(photo embeddings of the readable photos, mask of readable photos)."""
        import torch

        from ..models.model import to_numpy

        rels = self.photos["image"].tolist()
        if self.feature_cache_dir is not None and hasattr(model, "embed_photo_features"):
            from ..models.feature_cache import build_or_open

            cache = build_or_open(model, [self.catalog.image_path(r) for r in rels], self.feature_cache_dir,
                                  batch_size=self.batch_size, device=next(model.parameters()).device,
                                  show_progress=progress is not None,
                                  image_size=getattr(model, "photo_size", None),   # as encode_photo reads them
                                  part=model.photo_feature_part)
            valid = np.asarray(cache.valid, dtype=bool)
            features = cache.photo_features(np.flatnonzero(valid))
            with torch.inference_mode():
                return to_numpy(model.embed_photo_features(features.to(next(model.parameters()).device))), valid
        parts = []
        encode = getattr(model, "encode_photo", model.encode_image)
        for i in range(0, len(rels), self.batch_size):
            parts.append(to_numpy(encode(self._images(rels[i:i + self.batch_size]))))
            if progress is not None:
                progress(len(rels[i:i + self.batch_size]))
        return np.concatenate(parts), np.ones(len(rels), dtype=bool)

    def __call__(self, model, progress=None) -> dict:
        import torch

        from ..models.model import to_numpy

        products = self.catalog.products
        texts = self.catalog.product_texts()
        with torch.inference_mode():
            iconic = self._images(products["image"].tolist())
            targets = {"fused": to_numpy(model.encode_product(texts, iconic)),
                       "text": to_numpy(model.encode_text(texts)),
                       "image": to_numpy(model.encode_image(iconic))}
        photos, valid = self._encode_photos(model, progress)
        pid = products["id"].to_numpy()
        coarse = products["category"].astype(str).to_numpy()
        coarse_of = dict(zip(pid.tolist(), coarse.tolist()))
        truth_fine = self.photos["product_id"].to_numpy()[valid]
        truth_coarse = np.array([coarse_of[p] for p in truth_fine.tolist()])
        out = {"split": self.split, "n_photos": int(valid.sum()), "n_photos_unreadable": int((~valid).sum()),
               "n_products": len(products), "n_coarse_classes": int(len(set(coarse.tolist())))}
        for w in self.photo_image_weights:   # the photo's score as served: a mix of two cosines
            targets[f"fused+image {w:g}"] = photo_vectors(targets["fused"], targets["image"], w)
        scores = {kind: photos @ vectors.T for kind, vectors in targets.items()}
        for m in self.photo_expansions:
            for kind, vectors in list(targets.items()):
                scores[f"{kind} expanded {m}"] = expand_exactly(photos, vectors, m) @ vectors.T
        for kind, sims in scores.items():
            ranked = top_k(sims, len(products))
            fine = topk_hits(pid[ranked], truth_fine)
            crs = topk_hits(coarse[ranked], truth_coarse)
            out[kind] = {"fine_top1": fine[1], "fine_top5": fine[5], "coarse_top1": crs[1], "coarse_top5": crs[5]}
        return out
