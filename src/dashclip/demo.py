"""`dashclip demo`: the whole method, end to end, on the embedded default."""
import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo():
        """Run import, Stage 1, labels, Stage 2, index, eval and serve on the fashion catalog."""
        typer.echo("not built yet (issue #7)", err=True)
        raise typer.Exit(3)
