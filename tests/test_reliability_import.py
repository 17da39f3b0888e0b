"""Reliability of `dashclip catalog import` and the query readers (issue 23): hostile inputs, one test per defect.

Every test builds its tiny fixture here (tmp_path) and checks the rule of the house: each input line is in the
catalog or in the report, nothing outside the named output is written, nothing outside the named inputs read."""
import io
import json
import os
import socket
import struct
import time
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.clihelp import UserError
from dashclip.data.catalog import Catalog
from dashclip.data.importer import import_catalog


def jpeg(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


def data_lines(path) -> int:
    """Non-blank lines after the header: the rows a user sees in the file."""
    lines = path.read_bytes().splitlines()
    return sum(1 for line in lines[1:] if line.strip())


def accounted(report) -> int:
    """Rows out (products) plus rows reported as dropped."""
    return report.products + report.rows_dropped


def flat(text: str) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(text.split())


def codes(report, code):
    return [p for p in report.problems if p.code == code]


# --- 1. an unclosed quote in a CSV silently drops rows -------------------------------------------------------

def test_unclosed_quote_drops_no_row(tmp_path):
    cases = {
        # the quote runs to the end of the file
        "eof.csv": 'id,title,img,aisle\n1,Mug,,X\n2,"Red Apple,a.jpg,Fruit\n3,Pear,,Fruit\n4,Plum,,Fruit\n'
                   '5,Kiwi,,Fruit\n',
        # the quote is "closed" by the opening quote of a later field
        "later.csv": 'id,title,img,aisle\n1,Mug,,X\n2,"Red Apple,a.jpg,Fruit\n3,Pear,,Fruit\n4,Plum,,Fruit\n'
                     '5,"Kiwi",,Fruit\n',
        # the swallowed lines keep the record at the header's width (the stray quote closes before a comma)
        "width.csv": 'id,title,img,aisle\n1,"Mug,,X\n2,Pear,,Fruit\n3,Plum,,Fruit\n4,Kiwi 32",,Fruit\n'
                     '5,Fig,,Fruit\n',
    }
    rows = ["id,title,desc,aisle"] + [f"{i},Product number {i},description of product {i},Aisle {i % 7}"
                                      for i in range(1, 10001)]
    rows[500] = rows[500].replace("Product", '"Product', 1)     # swallows past the csv field size limit
    rows[9000] = rows[9000].replace("Product", '"Product', 1)   # swallows to the end of the file
    cases["big.csv"] = "\n".join(rows) + "\n"
    lost = 0
    for name, text in cases.items():
        src = tmp_path / name
        src.write_text(text)
        report = import_catalog(src, out=tmp_path / f"cat-{name}").report
        lost += data_lines(src) - accounted(report)
        assert accounted(report) == data_lines(src) == report.rows_read, name
        bad = codes(report, "malformed_row")
        assert bad and all("quote" in p.message for p in bad), (name, [p.message for p in bad])
    big = import_catalog(tmp_path / "big.csv", out=tmp_path / "cat-big2").report
    assert big.products == 9998 and [p.row for p in codes(big, "malformed_row")] == [501, 9001]
    assert lost == 0
    # Real multi-line quoted fields still read as one row each.
    src = tmp_path / "multi.csv"
    src.write_text('id,title,desc,aisle\n1,Mug,"soft\nwarm, cosy\nnice",X\n2,"Red\nApple",a,Fruit\n'
                   '3,"Pear ""Conference""",b,Fruit\n')
    result = import_catalog(src, out=tmp_path / "cat-multi", mapping={"text": ["desc"]})
    assert result.report.counts() == {} and result.report.products == 3
    cat = Catalog.open(result.out)
    assert cat.product(1)["text"] == "soft\nwarm, cosy\nnice" and cat.product(2)["title"] == "Red\nApple"
    assert cat.product(3)["title"] == 'Pear "Conference"'


# --- 4. the column check is quadratic -----------------------------------------------------------------------

def test_wide_header_imports_in_linear_time(tmp_path):
    n = 60_000
    src = tmp_path / "wide.csv"
    src.write_text(",".join(["id", "title"] + [f"c{i}" for i in range(n)] + ["c7"] * n) + "\n"
                   + "\n".join(",".join([str(r), f"T{r}"] + ["x"] * (2 * n)) for r in range(3)) + "\n")
    started = time.perf_counter()
    report = import_catalog(src, out=tmp_path / "cat").report
    assert time.perf_counter() - started < 5
    assert report.products == 3
    (dup,) = codes(report, "duplicate_column")
    assert f"appears {n + 1} times" in dup.message
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"required column 'name'.*60,002 columns in all"):
        import_catalog(src, out=tmp_path / "cat2", mapping={"title": "name"})
    assert time.perf_counter() - started < 5


# --- 5. smaller ones ------------------------------------------------------------------------------------------

def test_jsonl_bom_keeps_line_1(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"id": 1, "title": "Mug"}\n{"id": 2, "title": "Cup"}\n')
    report = import_catalog(src, out=tmp_path / "cat").report
    assert report.counts() == {} and report.products == 2
    assert Catalog.open(tmp_path / "cat").products["id"].tolist() == [1, 2]


def test_nul_bytes_are_removed_and_noted(tmp_path):
    src = tmp_path / "p.csv"
    src.write_bytes(b"id,title,aisle\n1,Mu\x00g,Kit\x00\x00chen\n2,Cup,X\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": 1, "title": "Mu\\u0000g"}\n')
    report = import_catalog(src, out=tmp_path / "cat", mapping={"category": "aisle"}).report
    notes = codes(report, "nul_bytes")
    assert [(p.row, p.action) for p in notes] == [(2, "kept"), (2, "kept")]
    assert "field 'title'" in notes[0].message + notes[1].message
    assert any("category (column 'aisle')" in p.message and "2 NUL" in p.message for p in notes)
    cat = Catalog.open(tmp_path / "cat")
    assert cat.product(1)["title"] == "Mug" and cat.product(1)["category"] == "Kitchen"
    report = import_catalog(jsonl, out=tmp_path / "cat-j").report
    assert [p.row for p in codes(report, "nul_bytes")] == [1]
    assert Catalog.open(tmp_path / "cat-j").product(1)["title"] == "Mug"


# --- 2. --out pointing at an existing directory deletes its contents -----------------------------------------

def snapshot(root):
    """Every file under root with its bytes: what must survive a refused import."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_dir_never_deletes_user_files(tmp_path, monkeypatch):
    src = tmp_path / "shop"
    (src / "photos").mkdir(parents=True)
    (src / "photos" / "a.jpg").write_bytes(jpeg())
    (src / "notes.txt").write_text("mine")
    csv_path = src / "products.csv"
    csv_path.write_text("sku,name,img\n1,Mug,a.jpg\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine too")
    mapping = {"id": "sku", "title": "name", "image": "img", "images_dir": str(src / "photos")}
    before = snapshot(tmp_path)
    hostile = {  # out -> words of the error
        src: "holds the input", src / "photos": "is the input", csv_path: "is the input",
        src / "photos" / "cat": "inside the input folder", other: "not a dashclip catalog output",
        tmp_path: "holds the input", other / "thesis.tex": "not a directory",
    }
    for out, words in hostile.items():
        with pytest.raises(UserError, match=words):
            import_catalog(csv_path, out=out, mapping=mapping)
    # `--out .` is a clear error, not an OSError traceback
    monkeypatch.chdir(other)
    runner = CliRunner()
    args = ["catalog", "import", str(csv_path), "--id", "sku", "--title", "name", "--image", "img",
            "--images-dir", str(src / "photos"), "-q"]
    for out in (".", str(other), ".."):
        res = runner.invoke(app, args + ["--out", out])
        assert res.exit_code == 2 and "current directory" in flat(res.output)
        assert isinstance(res.exception, SystemExit)            # not an OSError traceback
    res = runner.invoke(app, args + ["--out", str(src), "--overwrite"])   # --overwrite never deletes an input
    assert res.exit_code == 2 and "holds the input" in flat(res.output)
    assert snapshot(tmp_path) == before            # nothing written, nothing deleted
    # A catalog dir, an empty dir and a new path are fine; a catalog is re-imported over itself.
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "cat", tmp_path / "empty", tmp_path / "new" / "cat"):
        assert import_catalog(csv_path, out=out, mapping=mapping).report.products == 1
    assert json.loads((tmp_path / "new" / "cat" / "dashclip-output.json").read_text())["kind"] == "catalog"
    # --overwrite replaces a folder that is not a catalog (and only then)
    assert runner.invoke(app, args + ["--out", str(tmp_path / "junk"), "--overwrite"]).exit_code == 0
    (tmp_path / "junk2").mkdir()
    (tmp_path / "junk2" / "x").write_text("x")
    res = runner.invoke(app, args + ["--out", str(tmp_path / "junk2"), "--overwrite"])
    assert res.exit_code == 0 and not (tmp_path / "junk2" / "x").exists()
    assert snapshot(src) == {k[len("shop/"):]: v for k, v in before.items() if k.startswith("shop/")}
    # the outputs of another kind are not a catalog's to replace
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "dashclip-output.json").write_text('{"kind": "index"}')
    with pytest.raises(UserError, match="holds a dashclip index"):
        import_catalog(csv_path, out=idx, mapping=mapping)
