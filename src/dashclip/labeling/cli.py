"""CLI for relevance labels at scale (`dashclip labels ...`)."""
import typer

labels_app = typer.Typer(help="Relevance labels at scale: query pool, candidates, labelers, grading.",
                         no_args_is_help=True)


@labels_app.command("synthesize-queries")
def synthesize_queries():
    """Write a pool of realistic shopper queries from catalog attributes."""
    typer.echo("not built yet (issue #4)", err=True)
    raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels")
