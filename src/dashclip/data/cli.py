"""CLI for the catalog (`dashclip catalog ...`)."""
import typer

catalog_app = typer.Typer(help="Import, validate and inspect product catalogs.", no_args_is_help=True)


@catalog_app.command("import")
def import_():
    """Import a catalog (CSV, Parquet or JSONL) into the canonical form every stage reads."""
    typer.echo("not built yet (issue #2)", err=True)
    raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
