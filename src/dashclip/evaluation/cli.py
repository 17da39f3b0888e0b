"""CLI for evaluation reports (`dashclip eval`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate(
        model: Path = typer.Option(..., "--model", help="Model dir (`dashclip.load`)."),
        catalog: Path = typer.Option(..., "--catalog", help="Catalog dir the model is evaluated on."),
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
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report dir (default: MODEL/eval)."),
        heldout_only: bool = typer.Option(False, "--heldout-only", help="Only held-out queries "
                                          "(qid number divisible by 3)."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache of baseline embeddings "
                                                 "(default: runs/cache/eval)."),
        no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip BM25 and MiniLM."),
    ):
        """Run the downstream evaluations on a model directory and write a report
        (report.md, report.html, metrics.json, plots/*.png)."""
        from ..clihelp import console, user_errors
        from ..settings import runs_dir
        from .report import run_eval

        out_dir = out or model / "eval"
        with user_errors():
            if queries is None and (qrels is not None or labels_py is not None):
                raise ValueError("--qrels and --labels-py need --queries")
            if grocery_model is not None and grocery_catalog is None:
                raise ValueError("--grocery-model needs --grocery-catalog")
            paths = run_eval(model, catalog, out_dir, queries_path=queries, qrels_path=qrels, labels_py=labels_py,
                             embeddings_dir=embeddings, grocery_catalog_dir=grocery_catalog,
                             grocery_model_dir=grocery_model, heldout_only=heldout_only,
                             cache_dir=cache_dir or runs_dir() / "cache" / "eval", baselines=not no_baselines,
                             log=lambda msg: console.print(f"[dim]{msg}[/]"))
        typer.echo(f"report:  {paths['markdown']}")
        typer.echo(f"html:    {paths['html']}")
        typer.echo(f"metrics: {paths['metrics']}")
