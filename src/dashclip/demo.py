"""`dashclip demo`: the whole method on the fashion catalog, one command, on the embedded default.

    import -> Stage 1 -> embed -> labels -> Stage 2 -> index -> eval -> serve

The demo is the fashion preset of the shop pipeline (`dashclip.pipeline`, `dashclip train`): the same
steps (`pipeline/steps.py`) run from `pipeline.config.fashion_config`, which chooses sizes that fit a
laptop CPU. Every step writes into the work dir (default `runs/demo/`, `runs/demo-quick/` with --quick)
and records itself in `demo.json` when it is done, so a second run reuses what is done (and a killed
step resumes: Stage 1, embedding and grading keep their checkpoints/shards). `--fresh` starts over.
What a user keeps:
    model/    the Stage 2 model (product encoder + query encoder): dashclip.load("runs/demo/model")
    index/    the FAISS index of the product embeddings: dashclip search --model ... --index ...
    report/   the evaluation report (report.md, report.html, plots/) on held-out shopper queries

The shopper queries held out from every training step (qid divisible by 3) are excluded from the
labels and from Stage 2 here too.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import typer

from .pipeline.config import FASHION, fashion_config  # noqa: F401  (FASHION: the preset's catalog)
from .pipeline.steps import STEPS, Run, fashion_heldout_queries, run_steps  # noqa: F401

heldout_queries = fashion_heldout_queries     # the fashion dev queries held out from all training


def run_demo(work: Path | None = None, quick: bool = False, fresh: bool = False, log=print) -> Run:
    from .settings import runs_dir

    mode = "quick" if quick else "full"
    work = Path(work) if work else runs_dir() / ("demo-quick" if quick else "demo")
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    config = fashion_config(quick)
    return run_steps(Run(work, config, mode, log, "demo.json", {"config": config.to_dict()}))


def print_headline(d: Run, console) -> None:
    from rich.table import Table

    rows = d.record["steps"].get("eval", {}).get("headline", {})
    if rows:
        table = Table(title="Held-out shopper queries (fashion-queries, qid % 3 == 0)")
        for col in ("system", "NDCG@10", "Recall@100", "MRR"):
            table.add_column(col)
        for name, m in rows.items():
            table.add_row(name, *(f"{m[k]:.3f}" if k in m else "-" for k in ("ndcg@10", "recall@100", "mrr")))
        console.print(table)
    timings = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in d.record["steps"].items())
    console.print(f"steps: {timings}; total {d.record['total_seconds_all_steps'] / 60:.1f} min "
                  f"(this run {d.record['total_seconds_this_run'] / 60:.1f} min)")
    console.print(f"model:  {d.path('model')}\nindex:  {d.path('index')}\nreport: {d.path('report', 'report.md')}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        work: Path = typer.Option(None, "--work", help="Work dir (default runs/demo, runs/demo-quick with --quick)."),
        quick: bool = typer.Option(False, "--quick", help="A 1,500-product sample and short training (~5 min)."),
        fresh: bool = typer.Option(False, "--fresh", help="Delete the work dir and start over."),
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the web page at the end."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
    ):
        """Run the whole method on the fashion catalog: import, Stage 1, labels, Stage 2, photos, index, eval,
        then serve the web page. A second run reuses finished steps."""
        from .clihelp import console, tagged, user_errors

        with user_errors():
            d = run_demo(work, quick=quick, fresh=fresh, log=tagged("demo"))
        print_headline(d, console)
        if serve:
            from .serving.server import serve_app
            serve_app(d.path("model"), d.path("index"), d.path("catalog"), host=host, port=port)
