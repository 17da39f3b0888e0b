"""`dashclip train shop.toml`: a shop's catalog, query log and human grades -> trained search."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Path = typer.Argument(..., help="The pipeline config (TOML), e.g. examples/homedepot.toml."),
        out: Path = typer.Option(None, "--out", help="Output dir (default: the config's `out`, else runs/<name>)."),
        fresh: bool = typer.Option(False, "--fresh", help="Delete the output dir and start over."),
        check: bool = typer.Option(False, "--check", help="Only read and check the config, then stop."),
    ):
        """Run the whole method on your shop: import the catalog, Stage 1 (skipped without images), the
        labeler fine-tuned on your human grades, labels for your logged queries, Stage 2, index and a
        report on the evaluation-only grades (beside BM25, MiniLM and the base encoder). Resumable:
        a second run reuses finished steps."""
        from ..clihelp import console, tagged, user_errors
        from .config import load_config
        from .steps import output_dir, run_pipeline

        with user_errors():
            cfg = load_config(config)
            if check:
                console.print(f"{config}: ok (output {out or output_dir(cfg)})", markup=False)
                return
            r = run_pipeline(cfg, out=out, fresh=fresh, log=tagged("train"))
        ev = r.record["steps"].get("eval", {})
        for name, m in ev.get("headline", {}).items():
            console.print(f"{name:60s} NDCG@10 {m.get('ndcg@10', float('nan')):.4f}  "
                          f"Recall@100 {m.get('recall@100', float('nan')):.4f}  MRR {m.get('mrr', float('nan')):.4f}")
        if ev.get("warning"):
            tagged("warning", "bold yellow")(ev["warning"])
        timings = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in r.record["steps"].items())
        console.print(f"steps: {timings}; shipped: {ev.get('shipped', '?')}")
        console.print(f"model:  {r.path('model')}\nindex:  {r.path('index')}\nreport: {r.path('report', 'report.md')}")
