"""CLI for evaluation reports (`dashclip eval`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate(
        model: Path = typer.Option(..., "--model", help="Model dir (`dashclip.load`)."),
        catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog dir the model is evaluated on "
                                               "(retrieval, aisle prediction); leave out for grocery transfer only."),
        queries: Optional[Path] = typer.Option(None, "--queries", help="Query .jsonl (fashion-queries format): "
                                               "retrieval and relevance metrics."),
        qrels: Optional[Path] = typer.Option(None, "--qrels", help="Labels as a TSV qid/product_id/label "
                                             "(default: from each query's predicate via labels.py)."),
        labels_py: Optional[Path] = typer.Option(None, "--labels-py", help="labels.py that grades a query's "
                                                 "predicate (default: the one beside --queries)."),
        embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Product embeddings dir from "
                                                  "`dashclip embed-catalog` (default: MODEL/embeddings)."),
        grocery_catalog: Optional[Path] = typer.Option(None, "--grocery-catalog", help="Grocery catalog dir "
                                                       "(preset grocery-store-dataset): in-store photo transfer."),
        grocery_model: Optional[Path] = typer.Option(None, "--grocery-model", help="A second model dir, after "
                                                     "Stage 1 on the grocery train photos, for the same table."),
        grocery_stage1_epochs: int = typer.Option(0, "--grocery-stage1-epochs", min=0, help="Run Stage 1 "
                                                  "(frozen image tower) on the grocery train photos for this many "
                                                  "epochs into OUT/grocery-stage1 (reused when there) and add its "
                                                  "row to the grocery table; 0: zero-shot only."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report dir (default: MODEL/eval)."),
        heldout_only: bool = typer.Option(False, "--heldout-only", help="Only held-out queries "
                                          "(qid number divisible by 3)."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache of baseline embeddings "
                                                 "(default: runs/cache/eval)."),
        no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip BM25 and MiniLM."),
        reranker: Optional[Path] = typer.Option(None, "--reranker", help="A cross-encoder labeler dir (`dashclip "
                                                "labels train`): also score the model's last system with its top "
                                                "N re-ranked (default: MODEL/reranker when the model has one)."),
        rerank_depth: Optional[int] = typer.Option(None, "--rerank-depth", min=1, help="How many of the first "
                                                   "stage's products the re-ranker orders (default 20)."),
    ):
        """Run the downstream evaluations on a model directory and write a report
        (report.md, report.html, metrics.json, plots/*.png)."""
        from ..clihelp import console, user_errors
        from ..settings import runs_dir
        from .report import run_eval

        out_dir = out or model / "eval"
        with user_errors():
            if catalog is None and grocery_catalog is None:
                raise ValueError("give --catalog, --grocery-catalog, or both")
            if catalog is None and queries is not None:
                raise ValueError("--queries needs --catalog (the products the queries are ranked over)")
            if queries is None and (qrels is not None or labels_py is not None):
                raise ValueError("--qrels and --labels-py need --queries")
            if (grocery_model is not None or grocery_stage1_epochs) and grocery_catalog is None:
                raise ValueError("--grocery-model and --grocery-stage1-epochs need --grocery-catalog")
            if (reranker is not None or rerank_depth is not None) and queries is None:
                raise ValueError("--reranker and --rerank-depth need --queries (re-ranking is scored on them)")
            if grocery_model is not None and grocery_stage1_epochs:
                raise ValueError("give --grocery-model or --grocery-stage1-epochs, not both")
            paths = run_eval(model, catalog, out_dir, queries_path=queries, qrels_path=qrels, labels_py=labels_py,
                             embeddings_dir=embeddings, grocery_catalog_dir=grocery_catalog,
                             grocery_model_dir=grocery_model, grocery_stage1_epochs=grocery_stage1_epochs,
                             heldout_only=heldout_only, reranker_dir=reranker, rerank_depth=rerank_depth,
                             cache_dir=cache_dir or runs_dir() / "cache" / "eval", baselines=not no_baselines,
                             log=lambda msg: console.print(str(msg), style="dim", markup=False))
        headline = paths["headline"]
        if headline:
            from rich.table import Table

            table = Table("system", "NDCG@10", "Recall@100", "MRR", title="query → product retrieval")
            for name, m in headline.items():
                table.add_row(name, *(f"{m[k]:.3f}" for k in ("ndcg@10", "recall@100", "mrr")))
            console.print(table)
        typer.echo(f"report:  {paths['markdown']}")
        typer.echo(f"html:    {paths['html']}")
        typer.echo(f"metrics: {paths['metrics']}")
