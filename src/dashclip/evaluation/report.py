"""`dashclip eval`: run the evaluators on a model and write a report dir:

    metrics.json   every number, with when/where/what it was measured on
    report.md      the same numbers as tables, plots linked
    report.html    self-contained (plots inlined as base64 PNG)
    plots/*.png    Recall@K curves, aisle confusion matrix, PCA of product embeddings

The benchmark scripts call `baseline_scorers` and `evaluate_queries` from here (or `baselines.*_rankings`
+ `metrics.evaluate_rankings`, the same ranking and scoring), so a report and a benchmark give the same
numbers for the same model and data.
"""
from __future__ import annotations

import base64
import html
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import write_json, write_text
from .baselines import BM25Scorer, RerankScorer, baseline_scorers, model_scorers, retrieval_products
from .evaluators import CategoryEvaluator, GroceryEvaluator, RelevanceEvaluator, RetrievalEvaluator
from .qrels import load_labels_module, load_queries, predicate_qrels, read_qrels_tsv

# ---------------------------------------------------------------------------------------------------
# Systems and evaluation (shared with benchmarks/)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu": cpu, "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def evaluate_queries(queries: list[dict], qrels: dict, scorers: list) -> dict:
    """Retrieval and relevance metrics of every system: {"retrieval": {name: ...}, "relevance": ...}."""
    retrieval, relevance = RetrievalEvaluator(queries, qrels), RelevanceEvaluator(queries, qrels)
    out: dict = {"retrieval": {}, "relevance": {}}
    for scorer in scorers:
        out["retrieval"][scorer.name] = retrieval(scorer)
        if not getattr(scorer, "ranking_only", False):
            out["relevance"][scorer.name] = relevance(scorer)
    return out


def query_labels(queries: list[dict], catalog, qrels_path: str | Path | None = None,
                 labels_py: str | Path | None = None, queries_path: str | Path | None = None) -> dict:
    """Labels from a qrels TSV when given, else from each query's predicate via labels.py
    (default: the labels.py beside the query file)."""
    if qrels_path is not None:
        id_type = int if np.issubdtype(catalog.products["id"].dtype, np.integer) else str
        return read_qrels_tsv(qrels_path, id_type)
    if labels_py is None and queries_path is not None:
        labels_py = Path(queries_path).parent / "labels.py"
    if labels_py is None or not Path(labels_py).is_file():
        raise FileNotFoundError(f"no labels for the queries: give --qrels FILE, or --labels-py FILE "
                                f"(looked for {labels_py})")
    return predicate_qrels(queries, catalog.products, load_labels_module(labels_py))


@dataclass
class Evaluation:
    metrics: dict
    category: CategoryEvaluator | None = None
    embeddings: object | None = None
    catalog: object | None = None
    notes: list[str] = field(default_factory=list)


def align(embeddings, ids: Sequence) -> np.ndarray:
    """Row of each id in embeddings.ids (error naming the first missing id)."""
    row = {pid: i for i, pid in enumerate(embeddings.ids)}
    missing = [pid for pid in ids if pid not in row]
    if missing:
        raise ValueError(f"product {missing[0]!r} has no embedding ({len(missing)} missing)")
    return np.array([row[pid] for pid in ids], dtype=np.int64)


def evaluate(model, catalog, embeddings, queries: list[dict] | None = None, qrels: dict | None = None,
             grocery: Sequence[tuple[str, object, object]] = (), cache_dir: str | Path | None = None,
             baselines: bool = True, category_columns: Sequence[str] = ("category", "subCategory"),
             encoder=None, reranker=None, log=print) -> Evaluation:
    """Every evaluation of one model. `grocery` is a list of (label, model, grocery catalog).
    Without `catalog` (and embeddings) only the grocery transfer runs. `reranker`
    (`labeling.rerank.CrossEncoderReranker`): also the model's last system with its top N re-ranked."""
    metrics: dict = {"meta": machine_info(), "timings_s": {}}
    result = Evaluation(metrics, embeddings=embeddings, catalog=catalog)
    t0 = time.perf_counter()
    if queries:
        products = retrieval_products(catalog, embeddings.ids)
        ids = products["id"].tolist()
        scorers = baseline_scorers(catalog, products, cache_dir, encoder) if baselines else []
        if model is not None:
            fused = np.asarray(embeddings.vectors["fused"], dtype=np.float32)[align(embeddings, ids)]
            bm25 = next((s for s in scorers if isinstance(s, BM25Scorer)), None)
            scorers += model_scorers(model, fused, ids, bm25=bm25)
            if reranker is not None:
                scorers.append(RerankScorer(f"{scorers[-1].name}, re-ranked top {reranker.depth} (search --rerank)",
                                            scorers[-1], reranker, catalog))
        log(f"retrieval: {len(queries)} queries x {len(ids)} products, {len(scorers)} systems")
        metrics.update(evaluate_queries(queries, qrels, scorers))
        metrics["retrieval_products"] = len(ids)
        metrics["timings_s"]["retrieval"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    columns = [c for c in category_columns if c in catalog.products.columns] if catalog is not None else []
    if columns:
        log(f"aisle prediction: {', '.join(columns)}")
        result.category = CategoryEvaluator.from_catalog(catalog, columns)
        metrics["category"] = result.category(embeddings)
        metrics["timings_s"]["category"] = round(time.perf_counter() - t0, 2)
    for label, grocery_model, grocery_catalog in grocery:
        t0 = time.perf_counter()
        log(f"grocery transfer: {label}")
        features = Path(cache_dir) / "image-features" if cache_dir is not None else None
        metrics.setdefault("grocery", {})[label] = GroceryEvaluator(grocery_catalog, feature_cache_dir=features)(
            grocery_model)
        metrics["timings_s"][f"grocery: {label}"] = round(time.perf_counter() - t0, 2)
    return result


# ---------------------------------------------------------------------------------------------------
# Report: one list of blocks, rendered to Markdown and to HTML


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if np.isnan(x) else f"{x:.3f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _blocks(metrics: dict, plots: dict[str, Path]) -> list[tuple]:
    meta = metrics.get("meta", {})
    b: list[tuple] = [("h1", "dashclip evaluation report")]
    b.append(("p", f"Model `{meta.get('model_dir', '?')}` (model_id {meta.get('model_id', '?')}), catalog "
                   f"`{meta.get('catalog_dir') or '-'}`. Measured {meta.get('date')} on {meta.get('nproc')} CPUs "
                   f"({meta.get('cpu')}), load average {meta.get('load_avg_1m')} at the start, "
                   f"{meta.get('load_avg_1m_end', '?')} at the end."))
    if "retrieval" in metrics:
        b.append(("h2", "Query → product retrieval"))
        b.append(("p", f"{meta.get('queries', '')}: {next(iter(metrics['retrieval'].values()))['n_queries']} "
                       f"queries{' (held-out only)' if meta.get('heldout_only') else ''}, ranked over "
                       f"{metrics.get('retrieval_products', 0):,} products, top 100. Metrics as defined in "
                       "fashion-queries/README.md (ideal DCG from all labels; Recall@100 over min(#label-2, 100))."))
        rows = [[name, *(_fmt(m["overall"][k]) for k in ("ndcg@10", "recall@100", "mrr", "p@10"))]
                for name, m in metrics["retrieval"].items()]
        b.append(("table", ["system", "NDCG@10", "Recall@100", "MRR", "P@10"], rows))
        styles = sorted({s for m in metrics["retrieval"].values() for s in m["per_style"]})
        if styles:
            b.append(("p", "NDCG@10 per query style (number of queries in brackets):"))
            head = ["system"] + [f"{s} ({next(iter(metrics['retrieval'].values()))['per_style'].get(s, {}).get('n_queries', 0)})"
                                 for s in styles]
            rows = [[name] + [_fmt(m["per_style"].get(s, {}).get("ndcg@10", float("nan"))) for s in styles]
                    for name, m in metrics["retrieval"].items()]
            b.append(("table", head, rows))
        if "recall_curves" in plots:
            b.append(("img", "Recall@K per system", plots["recall_curves"]))
        b.append(("h2", "Relevance prediction (ROC-AUC of the query–product score)"))
        rows = [[name, *(_fmt(m[k]) for k in ("mean_auc_2_vs_0", "mean_auc_1+_vs_0", "pooled_auc_2_vs_0",
                                                 "pooled_auc_1+_vs_0"))]
                for name, m in metrics["relevance"].items()]
        b.append(("table", ["system", "AUC 2 vs 0 (mean/query)", "AUC ≥1 vs 0 (mean/query)",
                            "AUC 2 vs 0 (pooled)", "AUC ≥1 vs 0 (pooled)"], rows))
    if "category" in metrics:
        cat = metrics["category"]
        b.append(("h2", "Aisle prediction from product embeddings"))
        b.append(("p", f"{cat['n_products']:,} products, split by product id hash (20% test). Logistic-regression "
                       "probe (at most 10,000 training products) and cosine 10-NN. Accuracy / macro-F1."))
        rows = []
        for kind in ("fused", "image", "text"):
            for column, r in cat.get(kind, {}).items():
                rows.append([kind, column, f"{r['n_classes']}", f"{r['n_test']:,}",
                             _fmt(r["logreg"]["accuracy"]), _fmt(r["logreg"]["macro_f1"]),
                             _fmt(r["knn"]["accuracy"]), _fmt(r["knn"]["macro_f1"])])
        b.append(("table", ["embedding", "label", "classes", "test products", "probe acc", "probe macro-F1",
                            "kNN acc", "kNN macro-F1"], rows))
        for key in ("confusion", "projection"):
            if key in plots:
                b.append(("img", {"confusion": "Confusion matrix of the largest aisles (fused, probe)",
                                  "projection": "PCA of fused product embeddings by aisle"}[key], plots[key]))
    if "grocery" in metrics:
        b.append(("h2", "Grocery transfer (in-store photos → products)"))
        rows = []
        for label, g in metrics["grocery"].items():
            for kind in ("fused", "image", "text"):
                r = g[kind]
                rows.append([label, kind, f"{g['n_photos']:,}", _fmt(r["fine_top1"]), _fmt(r["fine_top5"]),
                             _fmt(r["coarse_top1"]), _fmt(r["coarse_top5"])])
        b.append(("p", "Each photo of the split is matched against every product's embedding (fused: "
                       "text + iconic image; text only; iconic image only). Coarse: the product's category. "
                       "Zero-shot: the evaluated model. After Stage 1: "
                       f"`{meta.get('grocery_model_dir') or '-'}`"
                       + (f" (Stage 1 settings: {', '.join(f'{k} {v}' for k, v in meta['grocery_stage1'].items())};"
                          " photos of the train split only)" if meta.get("grocery_stage1") else "") + "."))
        b.append(("table", ["model", "product embedding", "photos", "fine top-1", "fine top-5",
                            "coarse top-1", "coarse top-5"], rows))
    if metrics.get("timings_s"):
        b.append(("p", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in metrics["timings_s"].items())))
    return b


def render_markdown(blocks: list[tuple], base: Path) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "table":
            head, rows = block[1], block[2]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in rows)
            out.append("")
        elif kind == "img":
            out.append(f"![{block[1]}]({Path(block[2]).relative_to(base).as_posix()})\n")
    return "\n".join(out)


def render_html(blocks: list[tuple]) -> str:
    e = html.escape
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{e(block[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{e(block[1])}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
             "td:not(:first-child){text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>dashclip evaluation report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(result: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, plots/*.png, report.md and report.html into `out`; return their paths."""
    from . import plots

    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    metrics, figs = result.metrics, {}
    if metrics.get("retrieval"):
        figs["recall_curves"] = plots.recall_curves(metrics["retrieval"], out / "plots" / "recall_at_k.png")
    cat = result.category
    if cat is not None:
        column = next(iter(cat.labels))
        key = ("fused", column, "logreg")
        if key in cat.predictions:
            y_true, y_pred, names = cat.predictions[key]
            figs["confusion"] = plots.confusion_matrix(y_true, y_pred, names, out / "plots" / "confusion_aisles.png",
                                                       title=f"{column}: fused embedding, logistic-regression probe")
        if result.embeddings is not None and "fused" in result.embeddings.vectors:
            labels = dict(zip(cat.product_ids, cat.labels[column].tolist()))
            ids = [pid for pid in result.embeddings.ids if labels.get(pid) is not None]
            vectors = np.asarray(result.embeddings.vectors["fused"])[align(result.embeddings, ids)]
            figs["projection"] = plots.embedding_projection(vectors, [labels[p] for p in ids],
                                                            out / "plots" / "pca_fused.png",
                                                            title=f"fused product embeddings, PCA, by {column}")
    blocks = _blocks(metrics, figs)
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", render_markdown(blocks, out))
    write_text(out / "report.html", render_html(blocks))
    return {"metrics": out / "metrics.json", "markdown": out / "report.md", "html": out / "report.html", **figs}


# ---------------------------------------------------------------------------------------------------
# From paths (the CLI)


def load_model(path: str | Path):
    import dashclip

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model dir not found: {path}")
    return dashclip.load(path)


def load_product_embeddings(path: str | Path, model=None, catalog=None):
    """`models.embeddings.load_embeddings`, checked (there) against the model and catalog it claims to come from."""
    from ..models.embeddings import load_embeddings

    return load_embeddings(path, model_id=getattr(model, "model_id", None),
                           catalog_hash=catalog.content_hash if catalog is not None else None)


def stage1_settings(model_dir) -> dict | None:
    """What the Stage 1 run that wrote `model_dir` did (its pretrain_config.json), when known."""
    config = Path(model_dir).parent / "pretrain_config.json" if model_dir else None
    if config is None or not config.is_file():
        return None
    from ..io import read_json

    c = read_json(config)
    split = c.get("split", {})
    return {"config": c.get("config"), "image_size": c.get("image_size"), "epochs": c.get("epochs"),
            "max_steps": c.get("max_steps"), "batch_size": c.get("batch_size"), "lr": c.get("lr"),
            "train_pairs": split.get("train_pairs"), "heldout_products": split.get("heldout_products")}


HEADLINE_METRICS = ("ndcg@10", "recall@100", "mrr")


def headline(metrics: dict) -> dict[str, dict[str, float]]:
    """system -> {NDCG@10, Recall@100, MRR} on the evaluated queries: the table the demo prints."""
    return {name: {k: round(m["overall"][k], 4) for k in HEADLINE_METRICS}
            for name, m in metrics.get("retrieval", {}).items()}


def run_eval(model_dir: str | Path, catalog_dir: str | Path | None, out: str | Path, queries_path=None,
             qrels_path=None, labels_py=None, embeddings_dir=None, grocery_catalog_dir=None,
             grocery_model_dir=None, grocery_stage1_epochs: int = 0, grocery_stage1_options: dict | None = None,
             heldout_only: bool = False, cache_dir=None, baselines: bool = True, reranker_dir=None,
             rerank_depth: int | None = None, log=print) -> dict:
    """`dashclip eval` from paths: every evaluation of the model in `model_dir` on the catalog,
    written to the report dir `out` (`catalog_dir` None: the grocery transfer only). Returns the written paths ("metrics", "markdown", "html", plots)
    and "headline" (see `headline`; also in metrics.json).

    Grocery transfer (with `grocery_catalog_dir`): the model zero-shot, and a model after Stage 1 on
    the grocery train photos, either given (`grocery_model_dir`) or trained here for
    `grocery_stage1_epochs` epochs into `out/grocery-stage1` (reused when there; the evaluated model's
    config and image size, its pretrained towers; `grocery_stage1_options`: more PretrainConfig fields).

    Re-ranking (`reranker_dir`, a cross-encoder labeler dir, or the model dir's own `reranker/`): the
    model's last system is also scored with its top `rerank_depth` re-ordered by it."""
    from ..data.catalog import Catalog

    if catalog_dir is None and grocery_catalog_dir is None:
        raise ValueError("nothing to evaluate: give a catalog, a grocery catalog, or both")
    if catalog_dir is None and queries_path is not None:
        raise ValueError("queries need the catalog they are ranked over")
    model = load_model(model_dir)
    catalog = embeddings = None
    if catalog_dir is not None:
        catalog = Catalog.open(catalog_dir)
        embeddings = load_product_embeddings(embeddings_dir or Path(model_dir) / "embeddings", model, catalog)
    queries = qrels = None
    if queries_path is not None:
        queries = load_queries(queries_path, heldout_only=heldout_only)
        qrels = query_labels(queries, catalog, qrels_path, labels_py, queries_path)
    grocery, timings = [], {}
    if grocery_catalog_dir is not None:
        grocery_catalog = Catalog.open(grocery_catalog_dir)
        grocery.append(("zero-shot", model, grocery_catalog))
        if grocery_model_dir is None and grocery_stage1_epochs > 0:
            from .grocery import pretrain_on_split

            log(f"grocery: Stage 1 on the train photos, {grocery_stage1_epochs} epoch(s)")
            t0 = time.perf_counter()
            options = {"cache_dir": str(Path(cache_dir) / "image-features")} if cache_dir else {}
            grocery_model_dir = pretrain_on_split(grocery_catalog, Path(out) / "grocery-stage1",
                                                  config=model.config.name, image_size=model.config.image_size,
                                                  epochs=grocery_stage1_epochs,
                                                  **{**options, **(grocery_stage1_options or {})})
            timings["grocery: Stage 1 on train (or reused)"] = round(time.perf_counter() - t0, 2)
        if grocery_model_dir is not None:
            grocery.append(("after Stage 1 on grocery train", load_model(grocery_model_dir), grocery_catalog))
    reranker = None
    if queries is not None:
        from ..labeling.rerank import model_reranker

        reranker = model_reranker(model_dir, reranker_dir, rerank_depth)
    result = evaluate(model, catalog, embeddings, queries, qrels, grocery, cache_dir=cache_dir,
                      baselines=baselines, reranker=reranker, log=log)
    result.metrics["timings_s"].update(timings)
    result.metrics["meta"].update({
        "model_dir": str(model_dir), "model_id": getattr(model, "model_id", None),
        "catalog_dir": str(catalog_dir) if catalog_dir else None,
        "catalog_hash": catalog.content_hash if catalog is not None else None,
        "embeddings_dir": str(embeddings_dir or Path(model_dir) / "embeddings") if catalog is not None else None,
        "queries": str(queries_path) if queries_path else None,
        "qrels": str(qrels_path) if qrels_path else None, "heldout_only": heldout_only,
        "grocery_catalog": str(grocery_catalog_dir) if grocery_catalog_dir else None,
        "grocery_model_dir": str(grocery_model_dir) if grocery_model_dir else None,
        "grocery_stage1": stage1_settings(grocery_model_dir)})
    result.metrics["meta"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result.metrics["headline"] = headline(result.metrics)
    paths = write_report(result, out)
    return {**paths, "headline": result.metrics["headline"]}
