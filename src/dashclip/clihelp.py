"""Small helpers shared by the stage CLIs: one way to report a user error and to show progress."""
from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)


class UserError(Exception):
    """A problem with the user's input (file, row, field): printed without a traceback."""


def fail(message: str, code: int = 2) -> "typer.Exit":
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}")   # a message's own [brackets] are text
    return typer.Exit(code)


def tagged(tag: str, style: str = "bold cyan"):
    """A log function for long commands: each message printed after a styled `tag`, as plain text (a
    message's own [brackets], such as a config section's name, are not read as markup)."""
    from rich.markup import escape

    return lambda message: console.print(f"[{style}]{tag}[/] {escape(str(message))}")


@contextmanager
def user_errors():
    """Turn UserError / FileNotFoundError / ValueError into a clean message and exit code 2."""
    try:
        yield
    except (UserError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None


def progress(disable: bool = False) -> Progress:
    """A Rich progress bar that goes to stderr, so stdout stays clean for results."""
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=disable, transient=False)
