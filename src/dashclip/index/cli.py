"""CLI for vector indexes (`dashclip index ...`)."""
import typer

index_app = typer.Typer(help="Build and update vector indexes of product embeddings.", no_args_is_help=True)


@index_app.command("build")
def build():
    """Embed the catalog with a model and build a vector index."""
    typer.echo("not built yet (issue #6)", err=True)
    raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
