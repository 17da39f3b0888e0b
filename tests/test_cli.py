import pytest
from typer.testing import CliRunner

from dashclip.cli import app


def test_help_lists_every_stage():
    out = CliRunner().invoke(app, ["--help"]).output
    for cmd in ["catalog", "pretrain", "embed-catalog", "labels", "align", "index", "search", "serve", "eval",
                "train", "demo"]:
        assert cmd in out, cmd


def test_a_mapping_file_that_is_not_json_is_named_with_its_line(tmp_path):
    """One rule reads every JSON file (io.read_json): the error names the file and the line."""
    from dashclip.io import InputFileError, read_json

    bad = tmp_path / "mapping.json"
    bad.write_text('{"id": "sku",\n "title": }\n')
    with pytest.raises(InputFileError, match=r"mapping.json: not valid JSON \(.*line 2\)"):
        read_json(bad)
    bad.write_bytes(b'{"id": "\xff"}')
    with pytest.raises(ValueError, match="mapping.json: not valid JSON .not UTF-8"):
        read_json(bad)


def test_log_lines_keep_their_brackets(capsys):
    # pipeline messages name config sections ("raise [labels] k_bm25"); rich must not read them as markup
    from dashclip.clihelp import tagged

    tagged("train")("raise [labels] k_bm25 / k_dense, see [grades]")
    assert "train raise [labels] k_bm25 / k_dense, see [grades]" in capsys.readouterr().err
