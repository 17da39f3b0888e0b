"""CLI for search and the HTTP service."""
import typer


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search():
        """Search an index with a query, or a file of queries."""
        typer.echo("not built yet (issue #6)", err=True)
        raise typer.Exit(3)

    @app.command("serve")
    def serve():
        """Serve search over HTTP, with a web page."""
        typer.echo("not built yet (issue #6)", err=True)
        raise typer.Exit(3)
