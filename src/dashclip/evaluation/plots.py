"""The report's figures, drawn with matplotlib's Agg backend (no display needed). Each function
writes one PNG and returns its path."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    _pyplot().close(fig)
    return path


def recall_curves(retrieval: Mapping[str, dict], path: Path) -> Path:
    """Recall@K against K for every system (from the retrieval metrics' recall@K entries)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for system, m in retrieval.items():
        ks = sorted(int(key.split("@")[1]) for key in m["overall"] if key.startswith("recall@"))
        ax.plot(ks, [m["overall"][f"recall@{k}"] for k in ks], marker="o", label=system)
    ax.set_xscale("log")
    ax.set_xlabel("K (products retrieved)")
    ax.set_ylabel("Recall@K (label-2, denominator min(#label-2, K))")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Path,
                     top: int = 15, title: str = "") -> Path:
    """Row-normalised confusion matrix of the `top` most frequent true classes (other predictions
    are summed into an "other" column)."""
    plt = _pyplot()
    counts = np.bincount(y_true, minlength=len(class_names))
    keep = np.argsort(-counts, kind="stable")[:top]
    keep = keep[counts[keep] > 0]
    col_of = {c: i for i, c in enumerate(keep)}
    mat = np.zeros((len(keep), len(keep) + 1))
    for t, p in zip(y_true, y_pred):
        if t in col_of:
            mat[col_of[t], col_of.get(p, len(keep))] += 1
    mat /= np.maximum(mat.sum(1, keepdims=True), 1)
    names = [str(class_names[c]) for c in keep]
    fig, ax = plt.subplots(figsize=(0.45 * len(keep) + 3, 0.4 * len(keep) + 2))
    im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(keep) + 1), names + ["other"], rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """First two principal components (numpy SVD of the centred vectors)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def embedding_projection(vectors: np.ndarray, labels: Sequence[str], path: Path, top: int = 10,
                         max_points: int = 3000, title: str = "") -> Path:
    """2-D PCA of product embeddings coloured by aisle (the `top` largest aisles, a fixed sample)."""
    plt = _pyplot()
    labels = np.asarray([str(v) for v in labels], dtype=object)
    names, counts = np.unique(labels, return_counts=True)
    top_names = names[np.argsort(-counts, kind="stable")[:top]]
    idx = np.flatnonzero(np.isin(labels, top_names))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
    xy = pca_2d(vectors[idx]) if len(idx) > 2 else np.zeros((len(idx), 2))
    fig, ax = plt.subplots(figsize=(6.4, 5))
    cmap = plt.get_cmap("tab10" if len(top_names) <= 10 else "tab20")
    for i, name in enumerate(top_names):
        sel = labels[idx] == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.6, color=cmap(i % cmap.N), label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return _save(fig, path)
