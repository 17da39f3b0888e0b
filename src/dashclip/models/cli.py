"""CLI for exporting a model to another runtime: `dashclip export onnx`."""
from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export a model for fast CPU serving (ONNX Runtime).", no_args_is_help=True)


@export_app.command("onnx")
def onnx(
    model: Path = typer.Option(..., "--model", help="Model dir (`dashclip pretrain` / `dashclip align` output)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export dir to write (replaced atomically if it is an "
                             "export; a missing or empty dir is fine; any other dir needs --overwrite)."),
    int8: bool = typer.Option(False, "--int8", help="Quantize the text encoders' weights to int8 (dynamic "
                              "quantization): faster on a CPU, query cosine to the torch model >= 0.99."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out dir that is not an "
                                   "export."),
):
    """Export the query, text, image and product encoders as ONNX graphs, with the tokenizer and the query
    speller: `dashclip serve/search --model OUT` then run on ONNX Runtime."""
    import time

    from ..clihelp import console, user_errors
    from .onnx_model import export_onnx

    with user_errors():
        t0 = time.time()
        path = export_onnx(model, out, int8=int8, overwrite=overwrite)
    console.print(f"[green]exported[/] {model} ({'int8' if int8 else 'fp32'}) to {path} in {time.time() - t0:.0f} s; "
                  f"serve it: dashclip serve --model {path} --index INDEX")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
