"""CLI for Stage 1 (pretrain, embed-catalog) and Stage 2 (align)."""
import typer


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain():
        """Stage 1: continual catalog pretraining of the product encoder (ITC + ITM)."""
        raise typer.Exit(_todo("pretrain", 3))

    @app.command("embed-catalog")
    def embed_catalog():
        """Write product embeddings (fused, image, text) for a whole catalog."""
        raise typer.Exit(_todo("embed-catalog", 3))

    @app.command("align")
    def align():
        """Stage 2: train the query encoder with the QCC loss."""
        raise typer.Exit(_todo("align", 5))


def _todo(name, issue):
    typer.echo(f"`dashclip {name}` is not built yet (issue #{issue}).", err=True)
    return 3
