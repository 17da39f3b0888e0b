"""Search by photo (issue 20): a photo, a photo plus words, and "more like this", through the Python API,
`dashclip search --image` and batch lines with "image", and HTTP (a multipart upload, /products/{id}/similar);
uploads are hostile input (size and pixel caps, bombs, non-images, truncated files: a 4xx naming the problem,
nothing written to disk, the sent file name used for nothing)."""
from __future__ import annotations

import io
import json
import tempfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dashclip.serving.search import Searcher
from image_bytes import png_claiming
from test_search_fixtures import client, shop  # noqa: F401 (fixtures)


def photo_bytes(shop, pid=100) -> bytes:
    return shop.catalog.image_path(shop.catalog.product(pid)["image"]).read_bytes()


def ids(hits):
    return [h.id for h in hits]


def test_api_photo_photo_plus_words_and_more_like_this(shop):
    s = Searcher(shop.model, shop.index, shop.catalog)
    raw = photo_bytes(shop)
    pil = Image.open(io.BytesIO(raw))
    by_bytes, by_pil = s.search_image(raw, k=5), s.search_image(pil, k=5)
    assert len(by_bytes) == 5 and ids(by_bytes) == ids(by_pil) and [h.rank for h in by_bytes] == [1, 2, 3, 4, 5]
    # the query vector is the image embedding, or its mix with the query encoder's embedding of the words
    img = s.model.encode_image([pil.convert("RGB")]).numpy()
    assert np.allclose(s.encode_images([pil.convert("RGB")]), img / np.linalg.norm(img), atol=1e-5)
    words = s.encode(["in red"])
    mixed = s.encode_images([pil.convert("RGB")], ["in red"])[0]
    from dashclip.ranking import mix_photo_and_words, spread_sample_rows
    from dashclip.serving.search import IMAGE_TEXT_WEIGHT
    sample = s.spread_products()
    assert len(sample) == min(len(shop.catalog.products), 256)
    assert np.allclose(sample, s.product_vectors(spread_sample_rows(len(shop.catalog.products))), atol=1e-6)
    want = mix_photo_and_words(img, words, sample, IMAGE_TEXT_WEIGHT)[0]
    assert np.allclose(mixed, want, atol=1e-5)
    # filters apply to photo queries too
    assert {h.attributes["gender"] for h in s.search_image(raw, k=5, filters={"gender": ["Men"]})} == {"Men"}
    # more like this: the product's own (indexed) embedding, the product itself left out
    similar = s.search_similar(100, k=5)
    assert len(similar) == 5 and 100 not in ids(similar)
    vec = s.product_vectors(np.array([shop.catalog.row_of[100]]))
    top, _ = shop.index.search(vec, 6)
    assert ids(similar) == [p for p in top[0] if p != 100][:5]
    assert ids(s.search_similar("100", k=5)) == ids(similar)          # ids from URLs arrive as strings
    with pytest.raises(KeyError, match="unknown product id"):
        s.search_similar(12345)
    with pytest.raises(ValueError, match="not an image"):
        s.search_image(b"hello, world")
    with pytest.raises(ValueError, match="PIL image or the bytes"):
        s.search_image("/etc/passwd")                                # a path string is not a photo


def test_http_upload_photo_and_words(client, shop):
    raw = photo_bytes(shop)
    r = client.post("/search/image", params={"k": 4, "filter": "gender:Women"},
                    files={"image": ("../../../etc/evil.jpg", raw, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 4 and {x["attributes"]["gender"] for x in body["results"]} == {"Women"}
    assert body["query"] is None and body["image"] == {"width": 60, "height": 80}
    with_words = client.post("/search/image", params={"q": "  in   red "}, files={"image": ("a.jpg", raw)}).json()
    assert with_words["query"] == "in red"
    as_field = client.post("/search/image", data={"q": "in red"}, files={"image": ("a.jpg", raw)}).json()
    assert [x["id"] for x in as_field["results"]] == [x["id"] for x in with_words["results"]]


def test_http_similar_by_id(client, shop):
    r = client.get("/products/100/similar", params={"k": 3})
    assert r.status_code == 200 and r.json()["product_id"] == 100
    assert len(r.json()["results"]) == 3 and 100 not in [x["id"] for x in r.json()["results"]]
    assert client.get("/products/4242/similar").status_code == 404
    assert client.get("/products/100/similar", params={"filter": "size:M"}).status_code == 400


def test_http_photo_and_similar_search_faiss_on_the_request_thread_alone(client, shop, monkeypatch):
    """Photos and "more like this" are not batched: their index searches run on the request's thread, and
    there FAISS gets one OpenMP thread (index.single_thread_searches), as in the words queries' search thread."""
    import faiss

    from dashclip.index import VectorIndex

    if faiss.omp_get_max_threads() < 2:
        pytest.skip("one core: FAISS runs one thread anyway")
    seen, search = [], VectorIndex.search

    def spy(self, *args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return search(self, *args, **kwargs)

    monkeypatch.setattr(VectorIndex, "search", spy)
    assert client.post("/search/image", params={"k": 3}, files={"image": ("a.jpg", photo_bytes(shop))}).status_code == 200
    assert client.get("/products/100/similar", params={"k": 3}).status_code == 200
    assert seen and set(seen) == {1}
    assert faiss.omp_get_max_threads() >= 2        # the test's own thread keeps FAISS's team


def test_similar_by_id_with_slashes_in_ids(shop, tmp_path):
    """Ids may hold "/": "x/similar" (sent as x%2Fsimilar) is a product, /products/x%2Fimage/similar the
    look-alikes of product "x/image"."""
    import pandas as pd
    from fastapi.testclient import TestClient

    from dashclip.data.catalog import Catalog
    from dashclip.index import build_index
    from dashclip.serving.service import create_app

    pids = ["AB/123", "x/similar", "x/image", "plain", "50%off"]
    root = tmp_path / "catalog"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, pid in enumerate(pids):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / f"images/{i}.png")
        rows.append({"id": pid, "title": f"product {i}", "text": "", "category": "Tops", "image": f"images/{i}.png"})
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    (root / "manifest.json").write_text(json.dumps({"name": "ids", "attributes": [], "content_hash": "ids-1"}))
    catalog = Catalog.open(root)
    first = np.eye(len(pids), shop.model.embed_dim, dtype=np.float32)   # any index: for product_vectors
    s = Searcher(shop.model, build_index(first, pids, tmp_path / "i0", meta={"model_id": shop.model.model_id}), catalog)
    index = build_index(s.product_vectors(np.arange(len(pids))), pids, tmp_path / "index",
                        meta={"model_id": shop.model.model_id})
    with TestClient(create_app(Searcher(shop.model, index, catalog), watch_seconds=0)) as c:
        from urllib.parse import quote
        for pid in pids:
            r = c.get(f"/products/{quote(pid, safe='')}/similar", params={"k": 10})
            assert r.status_code == 200 and r.json()["product_id"] == pid, (pid, r.text)
            assert sorted(x["id"] for x in r.json()["results"]) == sorted(p for p in pids if p != pid)
        assert c.get("/products/x%2Fsimilar").json()["id"] == "x/similar"   # the product, not look-alikes
        assert c.get("/products/x/similar").status_code == 404               # look-alikes of "x": no such product


def test_hostile_uploads_are_4xx_and_leave_nothing_on_disk(client, shop, monkeypatch):
    raw = photo_bytes(shop)
    big = Image.effect_noise((1800, 1800), 100).convert("RGB")
    noisy = io.BytesIO()
    big.save(noisy, "BMP")
    noisy = noisy.getvalue() + b"\0" * max(0, 10 * 1024 * 1024 + 1 - len(noisy.getvalue()))

    def refuse(*a, **k):
        raise AssertionError("an upload touched the disk")
    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    before = sorted(p.name for p in __import__("pathlib").Path(tempfile.gettempdir()).iterdir())
    cases = [
        ({"files": {"image": ("big.bmp", noisy)}}, 413, "over the limit"),                    # > 10 MB
        ({"files": {"image": ("bomb.png", png_claiming(20_000, 20_000))}}, 413, "decompression bomb"),
        ({"files": {"image": ("41mp.png", png_claiming(8_000, 5_125))}}, 413, "40,000,000"),    # > 40 MP
        ({"files": {"image": ("a.txt", b"just some text")}}, 415, "not an image"),
        ({"files": {"image": ("cut.jpg", raw[: len(raw) // 2])}}, 400, "truncated"),
        ({"files": {"image": ("empty.jpg", b"")}}, 400, "zero-byte"),
        ({"content": raw, "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
        ({"files": {"photo": ("a.jpg", raw)}}, 400, "file field 'image'"),
        ({"content": b"--xx\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
          "headers": {"content-type": "multipart/form-data; boundary=xx"}}, 400, "cut off"),
    ]
    for kwargs, status, words in cases:
        r = client.post("/search/image", **kwargs)
        assert r.status_code == status and words in r.json()["detail"], (status, r.status_code, r.text[:300])
        assert "evil" not in r.text and "/etc" not in r.text
    def chunks():          # no Content-Length: the limit holds as the body streams in
        for _ in range(12):
            yield b"\0" * (1024 * 1024)
    r = client.post("/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    assert client.get("/search", params={"q": "dress"}, headers={"content-length": "3"}).status_code in (400, 413)
    assert sorted(p.name for p in __import__("pathlib").Path(tempfile.gettempdir()).iterdir()) == before


def test_cli_search_by_photo_and_batch_lines(shop, tmp_path):
    from dashclip.cli import app

    photo = tmp_path / "p.jpg"
    photo.write_bytes(photo_bytes(shop))
    base = ["search", "--model", str(shop.model_dir), "--index", str(shop.index_dir)]
    r = CliRunner().invoke(app, [*base, "--image", str(photo), "--query", "in red", "-k", "3"], terminal_width=200)
    assert r.exit_code == 0 and "3 results" in r.output, r.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>nope</html>")
    r = CliRunner().invoke(app, [*base, "--image", str(bad)], terminal_width=200)
    assert r.exit_code == 2 and "not an image" in " ".join(r.output.split()), r.output
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"qid": "t", "query": "red dress"}\n{"qid": "p", "image": "p.jpg"}\n'
                       '{"qid": "pw", "image": "p.jpg", "query": "in blue"}\n')
    out = tmp_path / "runs.jsonl"
    r = CliRunner().invoke(app, [*base, "--queries", str(queries), "--output", str(out), "-k", "4", "-q"])
    assert r.exit_code == 0, r.output
    runs = {row["qid"]: row["product_ids"] for row in map(json.loads, out.read_text().splitlines())}
    s = Searcher(shop.model, shop.index, shop.catalog)
    assert runs["p"] == ids(s.search_image(photo.read_bytes(), k=4))
    assert runs["pw"] == ids(s.search_image(photo.read_bytes(), k=4, text="in blue"))
    assert runs["t"] == ids(s.search("red dress", k=4))


def test_photo_and_words_encoded_at_once_on_two_threads_agree_with_one_at_a_time(shop):
    """A service encodes an uploaded photo on one thread while another encodes words. The model's train/eval
    mode is shared by both, so nothing may switch it per call: once it did (each encode set eval and then
    restored train), and the photo's BatchNorm ran on batch statistics half the time (the CI failure of the
    web page photo test). The Searcher puts the model in eval once; encoding leaves an eval model alone."""
    import threading

    shop.model.train()                  # as a fixture or a notebook may hand it over
    s = Searcher(shop.model, shop.index, shop.catalog)
    assert not shop.model.training
    pil = Image.open(io.BytesIO(photo_bytes(shop))).convert("RGB")
    texts = ["in red", "a blue cotton shirt for men"]
    photo_alone, words_alone = s.encode_images([pil]), s.encode_now(texts)
    stop, seen = threading.Event(), []

    def photos():
        while not stop.is_set():
            seen.append(float(np.abs(s.encode_images([pil]) - photo_alone).max()))

    t = threading.Thread(target=photos)
    t.start()
    try:
        for _ in range(60):
            seen.append(float(np.abs(s.encode_now(texts) - words_alone).max()))
    finally:
        stop.set()
        t.join()
    changed = sum(d >= 1e-5 for d in seen)
    assert changed == 0, f"{changed} of {len(seen)} encodings changed while another thread encoded"
    assert not shop.model.training


def test_encoding_leaves_an_eval_model_in_eval_and_restores_a_training_one(shop):
    m = shop.model
    m.eval()
    m.encode_text(["a red dress"])
    assert not m.training
    m.train()
    try:
        m.encode_text(["a red dress"])   # an evaluator mid-training: eval for the call, then back to train
        assert m.training
    finally:
        m.eval()


def test_photo_queries_search_from_the_photo_moved_toward_its_first_hits(shop, monkeypatch):
    from dashclip.ranking import expand_query
    from dashclip.ranking import PHOTO_EXPANSION

    assert Searcher(shop.model, shop.index, shop.catalog).photo_expansion == PHOTO_EXPANSION == 0   # off by default
    m = 3
    s = Searcher(shop.model, shop.index, shop.catalog, photo_expansion=m)
    pil = Image.open(io.BytesIO(photo_bytes(shop))).convert("RGB")
    photo = s.encode_images([pil])
    first, scores = shop.index.search(photo, m)
    stored = shop.index.vectors(first[0])
    moved = expand_query(photo, stored[None], scores)
    # by hand: the photo plus its first hits' vectors, weighted by their scores (a negative one adds nothing)
    want = photo[0] + (np.maximum(scores[0], 0)[:, None] * stored).sum(0)
    assert np.allclose(moved[0], want / np.linalg.norm(want), atol=1e-5)
    calls = []
    search = shop.index.search

    def spy(queries, k, filters=None):
        calls.append((np.array(queries), k))
        return search(queries, k, filters)

    monkeypatch.setattr(shop.index, "search", spy)
    assert ids(s.search_image(pil, k=6)) == search(moved, 6)[0][0]
    assert [k for _, k in calls] == [m, 6]
    assert np.allclose(calls[0][0], photo, atol=1e-6) and np.allclose(calls[1][0], moved, atol=1e-6)
    # 0 (the default) is one search from the photo itself; so is an index that cannot read its vectors back
    calls.clear()
    Searcher(shop.model, shop.index, shop.catalog).search_image(pil, k=6)
    assert [k for _, k in calls] == [6] and np.allclose(calls[0][0], photo, atol=1e-6)
    calls.clear()
    monkeypatch.setattr(type(shop.index), "_vectors", lambda self, ids, rows: None)
    s.search_image(pil, k=6)
    assert [k for _, k in calls] == [m, 6] and np.allclose(calls[1][0], photo, atol=1e-6)


def test_more_like_this_reads_the_indexed_vector_back(shop, monkeypatch):
    s = Searcher(shop.model, shop.index, shop.catalog)
    want = ids(s.search_similar(100, k=5))

    def no_encoding(rows):
        raise AssertionError("a product in the index is not encoded again")

    monkeypatch.setattr(s, "product_vectors", no_encoding)
    assert ids(s.search_similar(100, k=5)) == want


def test_cli_photo_expansion_reaches_the_searcher(shop, tmp_path, monkeypatch):
    from dashclip.cli import app

    seen = []
    expanded = Searcher._expanded

    def spy(self, index, queries, filters):
        seen.append(self.photo_expansion)
        return expanded(self, index, queries, filters)

    monkeypatch.setattr(Searcher, "_expanded", spy)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(photo_bytes(shop))
    base = ["search", "--model", str(shop.model_dir), "--index", str(shop.index_dir), "--image", str(photo)]
    for extra, want in (([], 0), (["--photo-expansion", "2"], 2)):
        r = CliRunner().invoke(app, [*base, *extra, "-k", "3"], terminal_width=200)
        assert r.exit_code == 0 and "3 results" in r.output, r.output
        assert seen[-1] == want
    r = CliRunner().invoke(app, [*base, "--photo-expansion", "-1"], terminal_width=200)
    assert r.exit_code == 2
