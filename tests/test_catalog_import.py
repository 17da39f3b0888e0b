"""Catalog import: every bad-input case of issue #2, each with its own tiny fixture made here
(Pillow-drawn images, hand-written CSV/JSONL/Parquet). Each test checks the message and the report counts."""
import contextlib
import io
import json

import pandas as pd
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.data.catalog import Catalog
from dashclip.data.importer import NothingToImportError, import_catalog
from dashclip.data.mapping import MissingColumnError
from dashclip.clihelp import UserError
from image_bytes import png_claiming


def drawn(fmt="JPEG", size=(32, 24), color=(200, 30, 30)) -> bytes:
    im = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(im).ellipse([2, 2, size[0] - 3, size[1] - 3], fill=color)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def make_source(tmp_path, csv_text: str | bytes, images: dict[str, bytes] = (), name="products.csv"):
    """Write a CSV and its images (under images/) into tmp_path/src; return the CSV path."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True, exist_ok=True)
    for fname, data in dict(images).items():
        (src / "images" / fname).write_bytes(data)
    path = src / name
    path.write_bytes(csv_text.encode() if isinstance(csv_text, str) else csv_text)
    return path


MAPPING = {"id": "sku", "title": "name", "image": "img", "images_dir": "images", "category": "aisle"}


def run(tmp_path, csv_text, images=(), mapping=MAPPING, **kw):
    source = make_source(tmp_path, csv_text, images)
    return import_catalog(source, out=tmp_path / "cat", mapping=mapping, **kw), source


def only(report, code):
    """The problems of one code (and check the counts agree)."""
    ps = [p for p in report.problems if p.code == code]
    assert report.counts()[code] == len(ps)
    return ps


def assert_all_rows_accounted(report):
    assert report.rows_read == report.products + report.rows_dropped


def test_good_catalog_round_trip(tmp_path):
    images = {"a.jpg": drawn(), "b.png": drawn("PNG", color=(0, 90, 200))}
    result, source = run(tmp_path, "sku,name,img,aisle,color\n"
                                   "20,Blue Mug,b.png,Kitchen,blue\n"
                                   "3,Red Apple,a.jpg,Fruit,red\n", images,
                         mapping={**MAPPING, "attrs": ["color"]})
    r = result.report
    assert (r.rows_read, r.products, r.products_with_image, r.counts()) == (2, 2, 2, {})
    cat = Catalog.open(tmp_path / "cat")
    assert cat.products["id"].tolist() == [3, 20]                 # sorted, int64
    assert str(cat.products["id"].dtype) == "int64"
    assert cat.products["title"].tolist() == ["Red Apple", "Blue Mug"]
    assert cat.attributes == ["color"] and cat.content_hash == result.content_hash
    # Fine images keep their original bytes; names come from the id and the detected format.
    assert cat.products["image"].tolist() == ["images/3.jpg", "images/20.png"]
    assert cat.image_path("images/3.jpg").read_bytes() == images["a.jpg"]
    assert set(cat.images["role"]) == {"primary"}
    report = json.loads((tmp_path / "cat" / "report.json").read_text())
    assert report["products"] == 2 and report["counts"] == {}
    assert "products imported: 2" in (tmp_path / "cat" / "report.md").read_text()


def test_duplicate_id_keeps_first(tmp_path):
    result, source = run(tmp_path, "sku,name,img,aisle\n1,First,a.jpg,X\n2,Other,a.jpg,X\n1,Second,a.jpg,X\n",
                         {"a.jpg": drawn()})
    (p,) = only(result.report, "duplicate_id")
    assert p.action == "dropped" and p.row == 4
    assert p.message.startswith(f"{source} line 4, field id (column 'sku'): duplicate id '1' (first seen at line 2)")
    cat = Catalog.open(result.out)
    assert cat.product(1)["title"] == "First" and len(cat) == 2
    assert_all_rows_accounted(result.report)


def test_duplicate_string_ids(tmp_path):
    result, _ = run(tmp_path, "sku,name,img,aisle\nA-1,First,,\nb2,B,,\nA-1,Again,,\n")
    assert result.report.counts()["duplicate_id"] == 1
    cat = Catalog.open(result.out)
    assert cat.products["id"].tolist() == ["A-1", "b2"]             # strings when any id is not an integer


def test_empty_and_whitespace_titles_are_dropped(tmp_path):
    result, source = run(tmp_path, 'sku,name,img,aisle\n1,,a.jpg,X\n2,"   ",a.jpg,X\n3,Good,a.jpg,X\n4,NA,a.jpg,X\n',
                         {"a.jpg": drawn()})
    ps = only(result.report, "empty_title")
    assert [p.row for p in ps] == [2, 3, 5]
    assert ps[0].message == (f"{source} line 2, field title (column 'name'): empty or whitespace-only title "
                             f"(id '1'); row dropped")
    assert "missing-value marker 'NA'" in ps[2].message
    assert Catalog.open(result.out).products["id"].tolist() == [3]
    assert_all_rows_accounted(result.report)


def test_missing_image_file_keeps_product_without_image(tmp_path):
    result, source = run(tmp_path, "sku,name,img,aisle\n1,Has,a.jpg,X\n2,Lost,gone.jpg,X\n3,None given,,X\n",
                         {"a.jpg": drawn()})
    (p,) = only(result.report, "image_missing")
    assert p.action == "kept" and p.row == 3 and "gone.jpg" in p.message and "field image (column 'img')" in p.message
    assert "image file not found" in p.message and "kept without image" in p.message
    assert only(result.report, "no_image")[0].row == 4
    cat = Catalog.open(result.out)
    assert len(cat) == 3 and cat.product(2)["image"] is None and cat.product(1)["image"] == "images/1.jpg"
    assert result.report.products_with_image == 1
    assert_all_rows_accounted(result.report)


def test_corrupt_truncated_and_zero_byte_images(tmp_path):
    jpeg = drawn(size=(64, 64))
    png = bytearray(drawn("PNG", size=(64, 64)))
    png[60:100] = bytes(40)
    result, source = run(tmp_path, "sku,name,img,aisle\n1,Cut,cut.jpg,X\n2,Empty,empty.jpg,X\n3,Broken,bad.png,X\n"
                                   "4,Fine,ok.jpg,X\n",
                         {"cut.jpg": jpeg[: len(jpeg) // 2], "empty.jpg": b"", "bad.png": bytes(png), "ok.jpg": jpeg})
    counts = result.report.counts()
    assert counts == {"image_truncated": 1, "image_zero_byte": 1, "image_corrupt": 1}
    assert "line 2, field image (column 'img'): truncated image" in only(result.report, "image_truncated")[0].message
    assert "line 3, field image (column 'img'): zero-byte file" in only(result.report, "image_zero_byte")[0].message
    assert "line 4, field image (column 'img'): corrupt image" in only(result.report, "image_corrupt")[0].message
    cat = Catalog.open(result.out)
    assert len(cat) == 4 and cat.products["image"].notna().tolist() == [False, False, False, True]
    assert sorted(p.name for p in (result.out / "images").iterdir()) == ["4.jpg"]  # bad bytes never copied


def test_file_that_is_not_an_image(tmp_path):
    result, source = run(tmp_path, "sku,name,img,aisle\n1,Text,notes.jpg,X\n",
                         {"notes.jpg": b"id,name\n1,this is a csv file\n"})
    (p,) = only(result.report, "image_not_an_image")
    assert p.message.startswith(f"{source} line 2, field image (column 'img'): not an image")
    assert Catalog.open(result.out).product(1)["image"] is None


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_rejected(tmp_path):
    result, _ = run(tmp_path, "sku,name,img,aisle\n1,Bomb,bomb.png,X\n2,Ok,ok.png,X\n",
                    {"bomb.png": png_claiming(50_000, 50_000), "ok.png": drawn("PNG")})
    (p,) = only(result.report, "image_decompression_bomb")
    assert "line 2, field image (column 'img'): decompression bomb rejected" in p.message
    assert Catalog.open(result.out).product(1)["image"] is None


def test_huge_image_is_downscaled_and_reported(tmp_path):
    result, _ = run(tmp_path, "sku,name,img,aisle\n1,Big,big.jpg,X\n2,Small,small.png,X\n",
                    {"big.jpg": drawn(size=(2400, 1600)), "small.png": drawn("PNG")})
    (p,) = only(result.report, "image_downscaled")
    assert p.action == "kept" and "2400x1600, larger than max_side=1024" in p.message and "1024x683" in p.message
    cat = Catalog.open(result.out)
    with Image.open(cat.image_path(cat.product(1)["image"])) as im:
        assert im.size == (1024, 683) and im.format == "JPEG"
    assert result.report.products_with_image == 2


def test_non_utf8_text_is_kept_with_replacement(tmp_path):
    csv_bytes = ("sku,name,img,aisle\n1,Caf".encode() + b"\xe9 Latte,,Dr\xffinks\n" + b"2,Plain,,X\n")
    result, source = run(tmp_path, csv_bytes)
    ps = only(result.report, "non_utf8")
    assert [(p.row, p.field) for p in ps] == [(2, "title (column 'name')"), (2, "category (column 'aisle')")]
    assert ps[0].message.startswith(f"{source} line 2, field title (column 'name'): text is not valid UTF-8; "
                                    f"the bad bytes were replaced with U+FFFD and the row kept")
    product = Catalog.open(result.out).product(1)
    assert product["title"] == "Caf\ufffd Latte" and product["category"] == "Dr\ufffdinks"
    assert result.report.products == 2
    # A file that is all Latin-1 reads cleanly when told so.
    again = import_catalog(source, out=tmp_path / "latin", mapping=MAPPING, encoding="latin-1")
    assert again.report.counts() == {"no_image": 2}
    assert Catalog.open(again.out).product(1)["title"] == "Caf\xe9 Latte"


def test_missing_required_column_stops_the_import(tmp_path):
    source = make_source(tmp_path, "sku,Name,img\n1,Mug,a.jpg\n")
    with pytest.raises(MissingColumnError) as err:
        import_catalog(source, out=tmp_path / "cat", mapping=MAPPING)
    msg = str(err.value)
    assert str(source) in msg and "required column 'name' (role title) not found" in msg
    assert "did you mean 'Name'?" in msg and "--title" in msg
    assert not (tmp_path / "cat").exists()
    res = CliRunner().invoke(app, ["catalog", "import", str(source), "--out", str(tmp_path / "cat"),
                                   "--id", "sku", "--title", "name", "-q"])
    assert res.exit_code == 2 and "required column 'name'" in res.output and "Traceback" not in res.output


def test_unknown_column_in_mapping_is_reported_and_ignored(tmp_path):
    result, source = run(tmp_path, "sku,name,img,aisle,colour\n1,Mug,,X,blue\n",
                         mapping={**MAPPING, "attrs": ["color"], "text": ["descr"]})
    ps = only(result.report, "unknown_column")
    assert [p.field for p in ps] == ["text", "attrs"] and all(p.action == "column" for p in ps)
    assert ps[1].message == (f"{source}, field attrs: mapping names column 'color' which is not in the file "
                             f"(did you mean 'colour'?); ignored")
    assert Catalog.open(result.out).attributes == []
    assert result.report.products == 1


def test_unknown_mapping_key_is_an_error(tmp_path):
    source = make_source(tmp_path, "sku,name\n1,Mug\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) 'titel' \(did you mean 'title'\?\)"):
        import_catalog(source, out=tmp_path / "cat", mapping={"id": "sku", "titel": "name"})


def test_nothing_usable_left_exits_non_zero(tmp_path):
    source = make_source(tmp_path, "sku,name,img,aisle\n1,,,\n,Mug,,\n")
    with pytest.raises(NothingToImportError) as err:
        import_catalog(source, out=tmp_path / "cat", mapping=MAPPING)
    assert err.value.report.counts() == {"empty_title": 1, "missing_id": 1}
    assert "no usable product left (2 rows read)" in str(err.value) and "line 3" in str(err.value)
    assert not (tmp_path / "cat").exists()
    res = CliRunner().invoke(app, ["catalog", "import", str(source), "--out", str(tmp_path / "cat"),
                                   "--id", "sku", "--title", "name", "-q"])
    assert res.exit_code == 2 and "no usable product left" in res.output


def test_malformed_rows_are_reported(tmp_path):
    result, source = run(tmp_path, 'sku,name,img,aisle\n1,Mug,,X\n2,Too,many,fields,here\n'
                                   '3,"Multi\nline",,X\n4,Ok,,X\n')
    (p,) = only(result.report, "malformed_row")
    assert p.row == 3 and "5 fields but the header has 4" in p.message
    cat = Catalog.open(result.out)
    assert cat.product(3)["title"] == "Multi\nline"
    # The row after a multi-line field is reported at its real line number.
    result2, _ = run(tmp_path, 'sku,name,img,aisle\n3,"Multi\nline",,X\n3,Dup,,X\n')
    assert only(result2.report, "duplicate_id")[0].row == 4
    assert_all_rows_accounted(result.report)


def test_reimport_is_byte_identical(tmp_path):
    images = {f"{i}.jpg": drawn(color=(i * 20, 0, 0)) for i in range(8)}
    rows = "".join(f"{i},Item {i},{i}.jpg,A{i % 3}\n" for i in reversed(range(8)))
    source = make_source(tmp_path, "sku,name,img,aisle\n" + rows + "3,Dup,3.jpg,X\n9,Bad,missing.jpg,X\n", images)
    a = import_catalog(source, out=tmp_path / "a", mapping=MAPPING, workers=4)
    b = import_catalog(source, out=tmp_path / "b", mapping=MAPPING, workers=1)
    c = import_catalog(source, out=tmp_path / "a", mapping=MAPPING, workers=3)  # over an existing catalog
    assert a.content_hash == b.content_hash == c.content_hash
    for name in ("catalog.parquet", "images.parquet", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b" / "images").iterdir())


def test_ids_are_never_used_as_paths(tmp_path):
    result, _ = run(tmp_path, "sku,name,img,aisle\n../../evil,Mug,a.jpg,X\nCON,Other,a.jpg,X\ncon,Third,a.jpg,X\n",
                    {"a.jpg": drawn()})
    cat = Catalog.open(result.out)
    paths = cat.products["image"].tolist()
    assert len(set(paths)) == 3
    for rel in paths:
        assert rel.startswith("images/") and rel.count("/") == 1 and ".." not in rel
        assert (result.out / rel).is_file()


def test_jsonl_source_with_bad_lines(tmp_path):
    src = tmp_path / "p.jsonl"
    (tmp_path / "a.jpg").write_bytes(drawn())
    src.write_bytes(b'{"id": "1", "title": "Mug", "image": "a.jpg", "tags": ["x", "y"]}\n'
                    b'not json\n\n[1, 2]\n{"id": 2, "title": "Caf\xe9"}\n')
    result = import_catalog(src, out=tmp_path / "cat", mapping={"image": "image", "text": ["tags"]})
    r = result.report
    assert r.counts() == {"malformed_row": 2, "non_utf8": 1, "no_image": 1}
    assert [p.row for p in only(r, "malformed_row")] == [2, 4]
    assert "not valid JSON" in only(r, "malformed_row")[0].message
    assert only(r, "non_utf8")[0].row == 5
    cat = Catalog.open(result.out)
    assert cat.products["id"].tolist() == [1, 2] and cat.product(1)["text"] == '["x", "y"]'
    assert_all_rows_accounted(r)


def test_parquet_source_row_numbers(tmp_path):
    src = tmp_path / "p.parquet"
    pd.DataFrame({"id": ["x1", "x2", "x1"], "title": ["A", "B", "C"], "price": [1.5, 2.0, None]}).to_parquet(src)
    result = import_catalog(src, out=tmp_path / "cat", mapping={"attrs": ["price"]})
    (p,) = only(result.report, "duplicate_id")
    assert p.message.startswith(f"{src} row 3, field 'id': duplicate id 'x1' (first seen at row 1)")
    cat = Catalog.open(result.out)
    assert cat.products["price"].tolist() == [1.5, 2.0] and str(cat.products["price"].dtype) == "float64"
    assert json.loads((result.out / "report.json").read_text())["row_numbers"].startswith("row numbers")


@contextlib.contextmanager
def http_server(directory):
    """A quiet local HTTP server of `directory`; yields its base URL."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_image_urls_fetched_from_local_server(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "a.jpg").write_bytes(drawn())
    (served / "big.jpg").write_bytes(drawn() + bytes(5000))
    with http_server(served) as base:
        result, source = run(tmp_path, f"sku,name,img,aisle\n1,Good,{base}/a.jpg,X\n2,Gone,{base}/nope.jpg,X\n"
                                       f"3,Big,{base}/big.jpg,X\n", max_image_bytes=3000,
                             allow_private_urls=True)
    ps = only(result.report, "image_fetch_failed")
    assert [p.row for p in ps] == [3, 4]
    assert "HTTP 404" in ps[0].message and "over the limit of 3,000" in ps[1].message
    cat = Catalog.open(result.out)
    assert cat.image_path(cat.product(1)["image"]).read_bytes() == (served / "a.jpg").read_bytes()
    assert cat.product(2)["image"] is None


def test_cli_import_with_mapping_file_and_stats(tmp_path):
    source = make_source(tmp_path, "sku,name,img,aisle\n1,Mug,a.jpg,Kitchen\n2,Cup,,Kitchen\n3,Pear,a.jpg,Fruit\n",
                         {"a.jpg": drawn()})
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"id": "sku", "title": "name", "image": "img", "images_dir": "images"}))
    out = tmp_path / "cat"
    res = CliRunner().invoke(app, ["catalog", "import", str(source), "--mapping", str(mapping),
                                   "--category", "aisle", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "report.md" in res.output and Catalog.open(out).product(1)["category"] == "Kitchen"
    res = CliRunner().invoke(app, ["catalog", "stats", str(out), "--json"])
    stats = json.loads(res.stdout)
    assert (stats["products"], stats["with_image"], stats["without_image"]) == (3, 2, 1)
    assert stats["per_category"] == [{"category": "Kitchen", "products": 2, "with_image": 1},
                                     {"category": "Fruit", "products": 1, "with_image": 1}]
    res = CliRunner().invoke(app, ["catalog", "stats", str(out)])
    assert res.exit_code == 0 and "Kitchen" in res.stdout and "with image" in res.stdout


def test_format_flag_for_an_unusual_extension(tmp_path):
    source = make_source(tmp_path, "id,title\n1,Mug\n", name="export.txt")
    res = CliRunner().invoke(app, ["catalog", "import", str(source), "--out", str(tmp_path / "cat"), "-q"])
    assert res.exit_code == 2 and "--format" in res.output
    res = CliRunner().invoke(app, ["catalog", "import", str(source), "--format", "csv", "--out",
                                   str(tmp_path / "cat"), "-q"])
    assert res.exit_code == 0, res.output
    assert Catalog.open(tmp_path / "cat").product(1)["title"] == "Mug"


def test_repeated_header_name_uses_the_first_column(tmp_path):
    result, source = run(tmp_path, "sku,name,img,aisle,name\n1,Mug,,X,Other\n")
    (p,) = only(result.report, "duplicate_column")
    assert p.message == f"{source}, field 'name': column 'name' appears 2 times in the header; the first one is used"
    assert Catalog.open(result.out).product(1)["title"] == "Mug"


@pytest.mark.parametrize("mapping,words", [
    ({"id": 3}, "'id' must be a column name"),
    ({"attrs": {"a": 1}}, "'attrs' must be a list of column names"),
    ({"image_pattern": "{0}.jpg"}, r"image_pattern '\{0\}.jpg' is not a pattern"),
])
def test_bad_mapping_values(tmp_path, mapping, words):
    source = make_source(tmp_path, "id,title\n1,Mug\n")
    with pytest.raises(UserError, match=words):
        import_catalog(source, out=tmp_path / "cat", mapping=mapping)


def test_catalog_synth_grows_a_catalog_deterministically_and_reuses_its_images(tmp_path):
    """`dashclip catalog synth`: the source's products first, then recombined ones of the same aisle with a
    real (reused) image; the same seed gives the same bytes, another seed another catalog."""
    from dashclip.data.synth import synthesize_catalog
    from toy_catalog import make_catalog

    src = Catalog.open(make_catalog(tmp_path / "src"))
    runner = CliRunner()
    res = runner.invoke(app, ["catalog", "synth", "--from", str(src.root), "--n", "500", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    a = Catalog.open(tmp_path / "a")
    assert len(a) == 500 and a.products["id"].is_unique and a.manifest["counts"]["products"] == 500
    pd.testing.assert_frame_equal(a.products.iloc[:48].reset_index(drop=True), src.products.reset_index(drop=True))
    new = a.products.iloc[48:]
    assert set(new["category"]) <= set(src.products["category"])
    kinds = dict(zip(src.products["image"], src.products["category"]))
    assert all(kinds[img] == cat for img, cat in zip(new["image"], new["category"]))  # the image shows the aisle
    assert all(a.image_path(img).is_file() for img in new["image"].head(20))
    assert len(a.image_index().paths) == len(src.image_index().paths)   # no image copied or added
    assert a.content_hash and a.content_hash != src.content_hash

    runner.invoke(app, ["catalog", "synth", "--from", str(src.root), "--n", "500", "--out", str(tmp_path / "b")])
    runner.invoke(app, ["catalog", "synth", "--from", str(src.root), "--n", "500", "--seed", "1",
                        "--out", str(tmp_path / "c")])
    assert (tmp_path / "a" / "catalog.parquet").read_bytes() == (tmp_path / "b" / "catalog.parquet").read_bytes()
    assert Catalog.open(tmp_path / "b").content_hash == a.content_hash
    assert Catalog.open(tmp_path / "c").content_hash != a.content_hash
    small = Catalog.open(synthesize_catalog(src, 10, tmp_path / "d"))
    assert small.products["id"].tolist() == src.products["id"].tolist()[:10]
    bad = runner.invoke(app, ["catalog", "synth", "--from", str(src.root), "--n", "50", "--out", str(src.root / "x")])
    assert bad.exit_code != 0 and "inside" in " ".join(bad.output.split()).lower()


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_the_delimiter_is_read_off_the_header_whatever_the_extension(tmp_path, sep):
    # shops export tab-separated files named .csv (WANDS does) and semicolon CSVs (European spreadsheets);
    # a comma inside a field is then just text
    rows = [["sku", "name", "img", "aisle"], ["1", "Mug, blue", "a.jpg", "Kitchen"], ["2", "Lamp", "", "Home, garden"]]
    text = "".join(sep.join(r) + "\n" for r in rows)
    result, _ = run(tmp_path, text, {"a.jpg": drawn()})
    cat = Catalog.open(result.out)
    assert [cat.product(i)["title"] for i in (1, 2)] == ["Mug, blue", "Lamp"]
    assert cat.product(2)["category"] == "Home, garden"
    assert result.report.products_with_image == 1 and result.report.rows_dropped == 0


def test_header_delimiter_counts_outside_quotes_and_keeps_the_default_on_a_tie():
    from dashclip.data.tables import header_delimiter

    assert header_delimiter('id,"a;b;c",name') == ","
    assert header_delimiter("query") == ","
    assert header_delimiter("query", "\t") == "\t"
    assert header_delimiter("a,b\tc", "\t") == "\t"
    assert header_delimiter('"x\ty"\tz,w,v') == ","


def test_downloads_stop_when_no_host_can_be_reached(tmp_path):
    # port 9 on loopback refuses at once, as a machine without network access fails every download;
    # after NETWORK_GIVE_UP such failures (and none reached) the rest are not tried, and every product is kept
    from dashclip.data.image_copy import NETWORK_GIVE_UP

    n = NETWORK_GIVE_UP + 40
    rows = "".join(f"{i},Thing {i},http://127.0.0.1:9/{i}.jpg,X\n" for i in range(1, n + 1))
    result, _ = run(tmp_path, "sku,name,img,aisle\n" + rows, allow_private_urls=True, workers=2)
    failed, skipped = only(result.report, "image_fetch_failed"), only(result.report, "image_fetch_skipped")
    assert NETWORK_GIVE_UP <= len(failed) < n and len(failed) + len(skipped) == n
    assert "could not reach their hosts" in skipped[0].message and "kept without image" in skipped[0].message
    assert result.report.products == n and result.report.rows_dropped == 0


def test_downloads_that_reach_a_host_never_stop_the_others(tmp_path):
    from dashclip.data.image_copy import NETWORK_GIVE_UP

    n = NETWORK_GIVE_UP + 8
    with http_server(tmp_path) as base:
        rows = "".join(f"{i},Thing {i},{base}/none-{i}.jpg,X\n" for i in range(1, n + 1))
        result, _ = run(tmp_path, "sku,name,img,aisle\n" + rows, allow_private_urls=True, workers=2)
    assert len(only(result.report, "image_fetch_failed")) == n      # HTTP 404: a host answered, so all are tried
    assert "image_fetch_skipped" not in result.report.counts()
