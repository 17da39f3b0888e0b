"""How good is a labeler? Grade held-out seed pairs and compare with the seed ("human") grades."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .grades import GRADE_VALUES, split_by_query
from .labelers import Labeler, pairs_from

CONFIDENCE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)


def agreement(truth, pred, confidence=None) -> dict:
    """Accuracy, quadratic-weighted Cohen's kappa, confusion matrix (rows truth, columns prediction),
    and accuracy/kappa/coverage when only grades at or above each confidence level are kept."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    truth, pred = np.asarray(truth, dtype=int), np.asarray(pred, dtype=int)

    def kappa(t, p):
        if len(t) == 0 or (len(set(t)) < 2 and len(set(p)) < 2):
            return None
        return float(cohen_kappa_score(t, p, weights="quadratic", labels=list(GRADE_VALUES)))

    out = {"pairs": int(len(truth)), "accuracy": float((truth == pred).mean()) if len(truth) else None,
           "kappa_quadratic": kappa(truth, pred),
           "confusion": confusion_matrix(truth, pred, labels=list(GRADE_VALUES)).tolist(),
           "truth_counts": np.bincount(truth, minlength=3).tolist(),
           "pred_counts": np.bincount(pred, minlength=3).tolist()}
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=float)
        out["by_confidence"] = []
        for level in CONFIDENCE_LEVELS:
            keep = confidence >= level
            out["by_confidence"].append({
                "min_confidence": level, "coverage": float(keep.mean()) if len(keep) else 0.0,
                "accuracy": float((truth[keep] == pred[keep]).mean()) if keep.any() else None,
                "kappa_quadratic": kappa(truth[keep], pred[keep])})
    return out


def evaluate_labeler(labeler: Labeler, seed: pd.DataFrame, catalog, heldout_only: bool = True,
                     batch_size: int = 256) -> dict:
    """Grade the held-out seed pairs (qid divisible by 3) with `labeler` and report agreement.

    Failures (a labeler that could not answer) are counted and left out of the agreement figures."""
    _, held = split_by_query(seed) if heldout_only else (None, seed.reset_index(drop=True))
    if held.empty:
        raise ValueError("no held-out seed grades to evaluate on (no qid divisible by 3)")
    pairs = pairs_from(catalog, held["query"].tolist(), held["product_id"].tolist())
    t0 = time.time()
    results = []
    for i in range(0, len(pairs), batch_size):
        results.extend(labeler.grade(pairs[i:i + batch_size]))
    seconds = time.time() - t0
    ok = np.array([r.ok for r in results], dtype=bool)
    report = agreement(held["grade"].to_numpy()[ok], [r.grade for r in results if r.ok],
                       [r.confidence for r in results if r.ok])
    report.update({"labeler": labeler.name, "labeler_version": labeler.version,
                   "queries": int(held["qid"].nunique()), "failures": int((~ok).sum()),
                   "grading_seconds": round(seconds, 2),
                   "pairs_per_second": round(len(pairs) / seconds, 1) if seconds > 0 else None})
    return report


def report_markdown(report: dict, title: str = "Labeler quality on held-out seed grades") -> str:
    cm = report["confusion"]
    lines = [f"# {title}", "",
             f"labeler `{report.get('labeler')}` version `{report.get('labeler_version')}`: "
             f"{report['pairs']} pairs over {report.get('queries', '?')} held-out queries, "
             f"{report.get('failures', 0)} failures.", "",
             f"- accuracy: {report['accuracy']:.3f}",
             f"- quadratic-weighted Cohen's kappa: {report['kappa_quadratic']:.3f}" if report["kappa_quadratic"]
             is not None else "- kappa: n/a", "",
             "Confusion matrix (rows: seed grade, columns: labeler grade):", "",
             "| seed \\ labeler | " + " | ".join(map(str, GRADE_VALUES)) + " |",
             "|---|" + "---:|" * len(GRADE_VALUES)]
    lines += [f"| {g} | " + " | ".join(map(str, cm[i])) + " |" for i, g in enumerate(GRADE_VALUES)]
    if report.get("by_confidence"):
        lines += ["", "| min confidence | coverage | accuracy | kappa |", "|---:|---:|---:|---:|"]
        for r in report["by_confidence"]:
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
            lines.append(f"| {r['min_confidence']} | {r['coverage']:.3f} | {fmt(r['accuracy'])} | "
                         f"{fmt(r['kappa_quadratic'])} |")
    return "\n".join(lines) + "\n"
