from typer.testing import CliRunner

from dashclip.cli import app


def test_help_lists_every_stage():
    out = CliRunner().invoke(app, ["--help"]).output
    for cmd in ["catalog", "pretrain", "embed-catalog", "labels", "align", "index", "search", "serve", "eval",
                "train", "demo"]:
        assert cmd in out, cmd
