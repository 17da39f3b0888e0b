"""CLI for evaluation reports (`dashclip eval`)."""
import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate():
        """Run the downstream evaluations on a model directory and write a report."""
        typer.echo("not built yet (issue #7)", err=True)
        raise typer.Exit(3)
