"""Reliability of `dashclip catalog import` and the query readers (issue 23): hostile inputs, one test per defect.

Every test builds its tiny fixture here (tmp_path) and checks the rule of the house: each input line is in the
catalog or in the report, nothing outside the named output is written, nothing outside the named inputs read."""
import io
import json
import os
import socket
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.clihelp import UserError
from dashclip.data.catalog import Catalog
from dashclip.data.importer import import_catalog
from image_bytes import png_claiming
from reliability import snapshot


def jpeg(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


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

def test_unclosed_quote_drops_no_row(tmp_path, reliability):
    rec = reliability("2. open CSV quote")
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
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    lost = 0
    for name, text in cases.items():
        src = tmp_path / name
        rec.case(2 if name == "big.csv" else 1)     # one case per unclosed quote
        report = import_catalog(src, out=tmp_path / f"cat-{name}").report
        lost += data_lines(src) - accounted(report)
        rec.count_lost(data_lines(src), accounted(report), name)
        assert accounted(report) == data_lines(src) == report.rows_read, name
        bad = codes(report, "malformed_row")
        assert bad and all("quote" in p.message for p in bad), (name, [p.message for p in bad])
    big = import_catalog(tmp_path / "big.csv", out=tmp_path / "cat-big2").report
    assert big.products == 9998 and [p.row for p in codes(big, "malformed_row")] == [501, 9001]
    assert lost == 0
    rec.count_writes(before, snapshot(tmp_path), [f"cat-{name}" for name in cases] + ["cat-big2"])
    # Real multi-line quoted fields still read as one row each.
    src = tmp_path / "multi.csv"
    src.write_text('id,title,desc,aisle\n1,Mug,"soft\nwarm, cosy\nnice",X\n2,"Red\nApple",a,Fruit\n'
                   '3,"Pear ""Conference""",b,Fruit\n')
    result = import_catalog(src, out=tmp_path / "cat-multi", mapping={"text": ["desc"]})
    assert result.report.counts() == {} and result.report.products == 3
    cat = Catalog.open(result.out)
    rec.count_lost([1, 2, 3], cat.products["id"].tolist(), "multi.csv")
    assert cat.product(1)["text"] == "soft\nwarm, cosy\nnice" and cat.product(2)["title"] == "Red\nApple"
    assert cat.product(3)["title"] == 'Pear "Conference"'
    rec.done()


# --- 4. the column check is quadratic -----------------------------------------------------------------------

def test_wide_header_imports_in_linear_time(tmp_path, reliability):
    rec = reliability("5. quadratic column check")
    n = 60_000
    src = tmp_path / "wide.csv"
    src.write_text(",".join(["id", "title"] + [f"c{i}" for i in range(n)] + ["c7"] * n) + "\n"
                   + "\n".join(",".join([str(r), f"T{r}"] + ["x"] * (2 * n)) for r in range(3)) + "\n")
    before = snapshot(tmp_path)
    rec.case()                                  # 120,002 columns, 60,001 of them one name
    started = time.perf_counter()
    report = import_catalog(src, out=tmp_path / "cat").report
    assert time.perf_counter() - started < 5
    rec.count_lost([0, 1, 2], Catalog.open(tmp_path / "cat").products["id"].tolist())
    assert report.products == 3
    (dup,) = codes(report, "duplicate_column")
    assert f"appears {n + 1} times" in dup.message
    started = time.perf_counter()
    rec.case()                                  # the same file, a required column missing
    with pytest.raises(UserError, match=r"required column 'name'.*60,002 columns in all"):
        import_catalog(src, out=tmp_path / "cat2", mapping={"title": "name"})
    assert time.perf_counter() - started < 5
    rec.count_writes(before, snapshot(tmp_path), ["cat", "cat2"])
    rec.done()


# --- 5. smaller ones ------------------------------------------------------------------------------------------

def test_jsonl_bom_keeps_line_1(tmp_path, reliability):
    rec = reliability("10. JSONL BOM")
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"id": 1, "title": "Mug"}\n{"id": 2, "title": "Cup"}\n')
    before = snapshot(tmp_path)
    rec.case()
    report = import_catalog(src, out=tmp_path / "cat").report
    rec.count_lost([1, 2], Catalog.open(tmp_path / "cat").products["id"].tolist())
    rec.count_writes(before, snapshot(tmp_path), ["cat"])
    assert report.counts() == {} and report.products == 2
    assert Catalog.open(tmp_path / "cat").products["id"].tolist() == [1, 2]
    rec.done()


def test_nul_bytes_are_removed_and_noted(tmp_path, reliability):
    rec = reliability("10. NUL bytes")
    src = tmp_path / "p.csv"
    src.write_bytes(b"id,title,aisle\n1,Mu\x00g,Kit\x00\x00chen\n2,Cup,X\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": 1, "title": "Mu\\u0000g"}\n')
    before = snapshot(tmp_path)
    rec.case(2)                                 # NULs in a CSV (two fields), an escaped NUL in JSONL
    report = import_catalog(src, out=tmp_path / "cat", mapping={"category": "aisle"}).report
    rec.count_lost([1, 2], Catalog.open(tmp_path / "cat").products["id"].tolist(), "p.csv")
    notes = codes(report, "nul_bytes")
    assert [(p.row, p.action) for p in notes] == [(2, "kept"), (2, "kept")]
    assert "field 'title'" in notes[0].message + notes[1].message
    assert any("category (column 'aisle')" in p.message and "2 NUL" in p.message for p in notes)
    cat = Catalog.open(tmp_path / "cat")
    assert cat.product(1)["title"] == "Mug" and cat.product(1)["category"] == "Kitchen"
    report = import_catalog(jsonl, out=tmp_path / "cat-j").report
    rec.count_lost([1], Catalog.open(tmp_path / "cat-j").products["id"].tolist(), "p.jsonl")
    rec.count_writes(before, snapshot(tmp_path), ["cat", "cat-j"])
    assert [p.row for p in codes(report, "nul_bytes")] == [1]
    assert Catalog.open(tmp_path / "cat-j").product(1)["title"] == "Mug"
    rec.done()


# --- 2. --out pointing at an existing directory deletes its contents -----------------------------------------

def test_out_dir_never_deletes_user_files(tmp_path, monkeypatch, reliability):
    # lost: the user's files deleted or changed, and rows not in the catalogs made;
    # writes outside: a refused --out is not an output, so a refusal may write nothing at all
    rec = reliability("3. --out deletes (catalog import)")
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
        rec.case()
        with pytest.raises(UserError, match=words):
            import_catalog(csv_path, out=out, mapping=mapping)
    # `--out .` is a clear error, not an OSError traceback
    monkeypatch.chdir(other)
    runner = CliRunner()
    args = ["catalog", "import", str(csv_path), "--id", "sku", "--title", "name", "--image", "img",
            "--images-dir", str(src / "photos"), "-q"]
    for out in (".", str(other), ".."):
        rec.case()
        res = runner.invoke(app, args + ["--out", out])
        assert res.exit_code == 2 and "current directory" in flat(res.output)
        assert isinstance(res.exception, SystemExit)            # not an OSError traceback
    rec.case()
    res = runner.invoke(app, args + ["--out", str(src), "--overwrite"])   # --overwrite never deletes an input
    assert res.exit_code == 2 and "holds the input" in flat(res.output)
    after = snapshot(tmp_path)
    rec.count_files_lost(before, after)
    rec.count_writes(before, after)
    assert after == before            # nothing written, nothing deleted
    # A catalog dir, an empty dir and a new path are fine; a catalog is re-imported over itself.
    (tmp_path / "empty").mkdir()
    outputs = ["new/cat", "empty", "junk", "junk2"]
    before = snapshot(tmp_path)
    for out in (tmp_path / "new" / "cat", tmp_path / "empty", tmp_path / "new" / "cat"):
        products = import_catalog(csv_path, out=out, mapping=mapping).report.products
        rec.count_lost(1, products, out.name)
        assert products == 1
    assert json.loads((tmp_path / "new" / "cat" / "dashclip-output.json").read_text())["kind"] == "catalog"
    # --overwrite replaces a folder that is not a catalog (and only then)
    assert runner.invoke(app, args + ["--out", str(tmp_path / "junk"), "--overwrite"]).exit_code == 0
    (tmp_path / "junk2").mkdir()
    (tmp_path / "junk2" / "x").write_text("x")
    res = runner.invoke(app, args + ["--out", str(tmp_path / "junk2"), "--overwrite"])
    assert res.exit_code == 0 and not (tmp_path / "junk2" / "x").exists()
    after = snapshot(tmp_path)
    rec.count_files_lost(before, after, outputs)
    rec.count_writes(before, after, outputs)
    assert snapshot(src) == {k[len("shop/"):]: v for k, v in before.items() if k.startswith("shop/")}
    # the outputs of another kind are not a catalog's to replace
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "dashclip-output.json").write_text('{"kind": "index"}')
    before = snapshot(tmp_path)
    rec.case()
    with pytest.raises(UserError, match="holds a dashclip index"):
        import_catalog(csv_path, out=idx, mapping=mapping)
    after = snapshot(tmp_path)
    rec.count_files_lost(before, after)
    rec.count_writes(before, after)
    rec.done()


# --- 3. image paths escape --images-dir; image URLs reach private addresses --------------------------------

def inside_bytes(images_dir) -> set[bytes]:
    """The bytes of every regular file inside an images dir (symlinks not followed): all an import may read."""
    return {p.read_bytes() for p in images_dir.rglob("*") if p.is_file() and not p.is_symlink()}


def test_image_paths_stay_inside_images_dir(tmp_path, reliability):
    # reads outside: catalog images whose bytes are no file of the images dir
    rec = reliability("4. image paths escape")
    photos = tmp_path / "shop" / "photos"
    photos.mkdir(parents=True)
    (photos / "ok.jpg").write_bytes(jpeg())
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.jpg").write_bytes(jpeg((0, 0, 255)))
    os.symlink(secret / "s.jpg", photos / "link.jpg")       # a symlink to a file outside
    os.symlink(secret, photos / "dirlink")                  # a symlink to a folder outside
    os.symlink(photos / "ok.jpg", photos / "inner.jpg")     # a symlink that stays inside: fine
    hostile = ["../../secret/s.jpg", str(secret / "s.jpg"), "/etc/passwd", "link.jpg", "dirlink/s.jpg",
               "../../secret/nope.jpg", "/etc/no-such-file", "~/x.jpg", "ok.jpg/../../../secret/s.jpg"]
    rows = "".join(f"{i},Item {i},{ref}\n" for i, ref in enumerate(hostile, 1))
    src = tmp_path / "shop" / "products.csv"
    src.write_text("sku,name,img\n" + rows + "98,Fine,ok.jpg\n99,Inner,inner.jpg\n")
    mapping = {"id": "sku", "title": "name", "image": "img", "images_dir": str(photos)}
    outside_before = snapshot(secret)
    before = snapshot(tmp_path)
    rec.case(len(hostile))
    result = import_catalog(src, out=tmp_path / "cat", mapping=mapping)
    r = result.report
    rec.count_lost(data_lines(src), r.products, "products.csv")
    refused = codes(r, "image_outside_images_dir")
    assert [p.row for p in refused] == list(range(2, 2 + len(hostile)))
    # The same words whether the target exists or not: nothing about it shows.
    for p, ref in zip(refused, hostile):
        assert p.message.endswith(f"field image (column 'img'): image path outside the images dir: {ref!r}; kept without image")
    assert (r.products, r.products_with_image, r.products + r.rows_dropped) == (len(hostile) + 2, 2, data_lines(src))
    cat = Catalog.open(result.out)
    allowed = inside_bytes(photos)
    rec.count_reads(sum(cat.image_path(rel).read_bytes() not in allowed for rel in cat.products["image"].dropna()))
    for rel in cat.products["image"].dropna():
        assert cat.image_path(rel).read_bytes() == (photos / "ok.jpg").read_bytes()   # nothing from outside
    assert snapshot(secret) == outside_before
    rec.count_writes(before, snapshot(tmp_path), ["cat"])
    # An image pattern built from an id cannot leave the images dir either.
    src2 = tmp_path / "shop" / "ids.csv"
    src2.write_text("sku,name\n../../secret/s,Evil\nok,Fine\n")
    before = snapshot(tmp_path)
    rec.case()
    r2 = import_catalog(src2, out=tmp_path / "cat2", mapping={"id": "sku", "title": "name",
                                                            "image_pattern": "{sku}.jpg", "images_dir": str(photos)})
    rec.count_lost(data_lines(src2), r2.report.products, "ids.csv")
    cat2 = Catalog.open(r2.out)
    rec.count_reads(sum(cat2.image_path(rel).read_bytes() not in allowed for rel in cat2.products["image"].dropna()))
    rec.count_writes(before, snapshot(tmp_path), ["cat2"])
    assert [p.row for p in codes(r2.report, "image_outside_images_dir")] == [2]
    assert r2.report.products_with_image == 1
    rec.done()


def _serve(directory, handler_extra=None):
    import http.server
    import threading

    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def do_GET(self):
            hits.append(self.path)
            if handler_extra and handler_extra(self):
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def test_private_image_urls_are_refused(tmp_path, monkeypatch, reliability):
    # reads outside: requests that reached the private server (the redirector plays a public host)
    rec = reliability("4. private URLs")
    import dashclip.data.image_copy as image_copy

    www = tmp_path / "www"
    www.mkdir()
    (www / "a.jpg").write_bytes(jpeg())
    target, target_hits = _serve(www)
    tport = target.server_address[1]

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{tport}/a.jpg")
        handler.end_headers()
        return True

    redirector, redirector_hits = _serve(www, redirect)
    rport = redirector.server_address[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    cport = closed.getsockname()[1]
    closed.close()                                            # a port where nothing listens
    try:
        hostile = [f"http://127.0.0.1:{tport}/a.jpg", f"http://127.0.0.1:{cport}/a.jpg",
                   f"http://localhost:{tport}/a.jpg", f"http://[::1]:{tport}/a.jpg", "http://169.254.169.254/x.jpg",
                   "http://10.0.0.1/x.jpg", "http://192.168.1.1/x.jpg", f"http://0.0.0.0:{tport}/a.jpg",
                   f"http://[::ffff:127.0.0.1]:{tport}/a.jpg"]
        rows = "".join(f"{i},Item {i},{u}\n" for i, u in enumerate(hostile, 1))
        src = tmp_path / "p.csv"
        src.write_text("sku,name,img\n" + rows)
        mapping = {"id": "sku", "title": "name", "image": "img"}
        before = snapshot(tmp_path)
        rec.case(len(hostile))
        r = import_catalog(src, out=tmp_path / "cat", mapping=mapping, fetch_timeout=2).report
        rec.count_lost(len(hostile), r.products, "p.csv")
        rec.count_reads(len(target_hits), "private server")
        rec.count_writes(before, snapshot(tmp_path), ["cat"])
        refused = codes(r, "image_url_refused")
        assert [p.row for p in refused] == list(range(2, 2 + len(hostile))) and not target_hits
        # an open port and a closed one read the same: the report does not probe the network
        same = [p.message.replace(str(tport), "PORT").replace(str(cport), "PORT") for p in refused[:2]]
        assert same[0].replace("line 2", "line N") == same[1].replace("line 3", "line N")
        assert r.products == len(hostile) and r.products_with_image == 0
        # every address a host resolves to is checked, and so is every redirect hop
        real_getaddrinfo = socket.getaddrinfo

        def two_addresses(host, *a, **kw):
            if host == "shop.example":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
                        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
            return real_getaddrinfo(host, *a, **kw)

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        real_check = image_copy._private_address
        monkeypatch.setattr(image_copy, "_private_address",           # the redirector plays a public host
                            lambda host, port: None if port == rport else real_check(host, port))
        src.write_text(f"sku,name,img\n1,Multi,http://shop.example/a.jpg\n2,Hop,http://127.0.0.1:{rport}/a.jpg\n")
        before, hits = snapshot(tmp_path), len(target_hits)
        rec.case(2)                                 # a host with a private address among others; a redirect
        r = import_catalog(src, out=tmp_path / "cat2", mapping=mapping, fetch_timeout=2).report
        rec.count_lost(2, r.products, "multi/redirect")
        rec.count_reads(len(target_hits) - hits, "private server")
        rec.count_writes(before, snapshot(tmp_path), ["cat2"])
        assert [p.row for p in codes(r, "image_url_refused")] == [2, 3]
        assert redirector_hits and not target_hits
        monkeypatch.undo()
        # opting in fetches from a local server
        src.write_text(f"sku,name,img\n1,Local,http://127.0.0.1:{tport}/a.jpg\n")
        r = import_catalog(src, out=tmp_path / "cat3", mapping=mapping, allow_private_urls=True).report
        assert r.products_with_image == 1 and target_hits
    finally:
        target.shutdown()
        redirector.shutdown()
    rec.done()


# --- 5. memory: file size and pixel caps ----------------------------------------------------------------------

def test_image_size_caps_before_reading(tmp_path, reliability):
    rec = reliability("10. huge images/files")
    import tracemalloc

    photos = tmp_path / "photos"
    photos.mkdir()
    with open(photos / "huge.jpg", "wb") as f:     # 600 MB, sparse: costs no disk, only a read would cost memory
        f.truncate(600 * 1024 * 1024)
    (photos / "small.jpg").write_bytes(jpeg())
    (photos / "wide.png").write_bytes(png_claiming(9000, 9000))     # 81 MP claimed in a few bytes
    src = tmp_path / "p.csv"
    src.write_text("sku,name,img\n1,Huge,huge.jpg\n2,Small,small.jpg\n3,Wide,wide.png\n")
    mapping = {"id": "sku", "title": "name", "image": "img", "images_dir": str(photos)}
    before = snapshot(tmp_path)
    rec.case(2)                                     # a 600 MB file, an 81-megapixel PNG
    tracemalloc.start()
    try:
        r = import_catalog(src, out=tmp_path / "cat", mapping=mapping, workers=1).report
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rec.count_lost([1, 2, 3], Catalog.open(tmp_path / "cat").products["id"].tolist())
    assert peak < 50 * 1024 * 1024
    (big,) = codes(r, "image_too_large")
    assert big.row == 2 and "629,145,600 bytes, over the limit of 20,971,520" in big.message
    (bomb,) = codes(r, "image_decompression_bomb")
    assert bomb.row == 4 and "over the limit of 40,000,000" in bomb.message
    assert (r.products, r.products_with_image) == (3, 1)
    # the cap is a setting
    r = import_catalog(src, out=tmp_path / "cat2", mapping=mapping, max_image_bytes=len(jpeg()) - 1).report
    rec.count_lost(3, r.products, "cat2")
    rec.count_writes(before, snapshot(tmp_path), ["cat", "cat2"])
    assert [p.row for p in codes(r, "image_too_large")] == [2, 3] and r.products_with_image == 0
    rec.done()


# --- 5. query files: a Latin-1 byte; qid "1" and qid 1 ---------------------------------------------------------

def _query_readers():
    from dashclip.evaluation.qrels import load_queries
    from dashclip.labeling.queries import read_queries as labeling_read_queries
    from dashclip.serving.batch import read_batch_queries as serving_read_queries

    return {"serving": serving_read_queries, "evaluation": load_queries, "labeling": labeling_read_queries}


def test_query_file_latin1_byte_names_file_and_line(tmp_path, reliability):
    # lost: not measured (a file with a bad byte is refused whole, with its file and line)
    rec = reliability("10. Latin-1 queries file")
    p = tmp_path / "q.jsonl"
    p.write_bytes(b'{"qid": "a1", "query": "red shirt"}\n\n{"qid": "a2", "query": "caf\xe9 mug"}\n')
    txt = tmp_path / "q.txt"                    # the labeling reader's plain-text form
    txt.write_bytes(b"red shirt\ncaf\xe9 mug\n")
    before = snapshot(tmp_path)
    for name, read in _query_readers().items():
        rec.case()
        with pytest.raises(UserError, match=r"q\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 28\)"):
            read(p)
    rec.case()
    with pytest.raises(UserError, match=r"q\.txt:2: not UTF-8"):
        _query_readers()["labeling"](txt)
    # and the command line says so without a traceback
    rec.case()
    res = CliRunner().invoke(app, ["search", "--model", str(tmp_path), "--index", str(tmp_path), "--queries",
                                   str(p), "--output", str(tmp_path / "out.jsonl"), "-q"])
    rec.count_writes(before, snapshot(tmp_path), ["out.jsonl"])
    assert res.exit_code == 2 and "q.jsonl:3: not UTF-8" in flat(res.output)
    rec.done()


def test_duplicate_qids_after_normalisation(tmp_path, reliability):
    # lost: the queries of a file without duplicates that are not read back
    rec = reliability('10. qid "1" vs 1')
    p = tmp_path / "q.jsonl"
    p.write_text('{"qid": "1", "query": "red shirt"}\n{"qid": "2", "query": "mug"}\n{"qid": 1, "query": "hat"}\n')
    readers = _query_readers()
    before = snapshot(tmp_path)
    rec.case(2)
    with pytest.raises(UserError, match=r"q\.jsonl:3: duplicate qid: qid 1 repeats line 1 \(1 and '1' are the same"):
        readers["serving"](p)
    with pytest.raises(UserError, match=r"q\.jsonl:3: duplicate qid: qid 1 repeats line 1"):
        readers["labeling"](p)
    rec.count_writes(before, snapshot(tmp_path))
    p.write_text('{"qid": "dev1", "query": "red shirt"}\n{"qid": " dev1 ", "query": "hat"}\n')
    before = snapshot(tmp_path)
    for name, read in readers.items():
        rec.case()
        with pytest.raises(UserError, match=r"q\.jsonl:2: duplicate qid: qid ' dev1 ' repeats line 1"):
            read(p)
    rec.count_writes(before, snapshot(tmp_path))
    p.write_text('{"qid": "1", "query": "red shirt"}\n{"qid": 2, "query": "hat"}\n')
    before = snapshot(tmp_path)
    read_back = [q["qid"] for q in readers["serving"](p)]
    rec.count_lost(["1", 2], read_back)
    rec.count_writes(before, snapshot(tmp_path))
    assert read_back == ["1", 2]
    rec.done()
