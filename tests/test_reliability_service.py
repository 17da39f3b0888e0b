"""Reliability of search and the HTTP service (issue 23): `search --output` checked before the work, ids that
round-trip through every URL the service gives, /healthz after a failed reload, bounded 422s, the API key,
CORS and the loopback default. One test per defect, named after it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from dashclip.serving.search import Searcher
from dashclip.serving.service import create_app
from reliability import snapshot
from test_search_fixtures import build_shop_index, client, shop  # noqa: F401 (fixtures)

HOSTILE_IDS = ["AB/123", "50%off", "%2F", "a b", "what?", "#1", "café/ü", "x/image", "a/b/image", "..%2F..",
               "日本/靴", "plain"]


def invoke(*args):
    from dashclip.cli import app

    result = CliRunner().invoke(app, [*map(str, args)], terminal_width=200)
    return result.exit_code, " ".join((result.output + (result.stderr if result.stderr_bytes is not None else "")).split())


# ------------------------------------------------------------------------------ 5. search --output
def test_search_output_directory_fails_before_the_work(shop, tmp_path, monkeypatch, reliability):
    # lost: queries of the file without a line in the results; writes outside: a refused --output is not an
    # output, so a refusal may write nothing at all (the shop's model, index and catalog are watched too)
    rec = reliability("8. search --output")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"qid": "q1", "query": "red dress"}\n')
    import dashclip.serving.search as search_mod
    monkeypatch.setattr(search_mod.Searcher, "open",
                        classmethod(lambda *a, **k: pytest.fail("searched before checking --output")))
    shop_before, before = snapshot(shop.root), snapshot(tmp_path)
    for output, message in [(tmp_path, "is a directory"), (tmp_path / "no" / "such" / "r.jsonl", "does not exist")]:
        rec.case()
        code, out = invoke("search", "--model", shop.model_dir, "--index", shop.index_dir, "--queries", queries,
                           "--output", output)
        assert code == 2 and message in out and "Traceback" not in out, out
    rec.count_writes(before, snapshot(tmp_path))
    assert not (tmp_path / "no").exists()
    monkeypatch.undo()
    before = snapshot(tmp_path)
    code, out = invoke("search", "--model", shop.model_dir, "--index", shop.index_dir, "--queries", queries,
                       "--output", tmp_path / "runs.jsonl", "-q")
    rec.count_writes(before, snapshot(tmp_path), ["runs.jsonl"])
    rec.count_writes(shop_before, snapshot(shop.root))
    assert code == 0, out
    runs = (tmp_path / "runs.jsonl").read_text().splitlines()
    rec.count_lost(["q1"], [json.loads(line)["qid"] for line in runs if line.strip()])
    assert json.loads((tmp_path / "runs.jsonl").read_text())["qid"] == "q1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl", "runs.jsonl"]  # no temporary left
    rec.done()


# ------------------------------------------------------------------------------ 6. ids in URLs
def reaches(c, pid, hit, own_image) -> tuple[bool, list[bytes]]:
    """Whether product `pid` round-trips (its search hit, /products/<id> and both image URLs lead back to it and
    its own image), and the images served on the way."""
    from urllib.parse import quote

    if hit is None:
        return False, []
    first = c.get(hit["image_url"]) if hit.get("image_url") else None
    p = c.get(f"/products/{quote(pid, safe='')}")
    ok = p.status_code == 200 and p.json().get("id") == pid and p.json().get("in_index")
    again = c.get(p.json()["image_url"]) if ok and p.json().get("image_url") else None
    served = [r.content for r in (first, again) if r is not None and r.status_code == 200]
    ok = ok and first is not None and again is not None and served == [own_image, own_image]
    return bool(ok), served


def test_ids_with_slash_round_trip_over_http(shop, tmp_path, reliability):
    """Ids with / % ? # spaces and non-ASCII: every URL the service hands out leads back to the product."""
    # lost: products not reachable over HTTP; reads outside: images served that are no image of the catalog
    from dashclip.data.catalog import Catalog
    from dashclip.index import build_index

    rec = reliability("9. ids with /")

    root = tmp_path / "catalog"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, pid in enumerate(HOSTILE_IDS):
        rel = f"images/{i}.png"
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(root / rel)
        rows.append({"id": pid, "title": f"product {i}", "text": "", "category": "Tops", "image": rel})
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    (root / "manifest.json").write_text(json.dumps({"name": "ids", "attributes": [], "content_hash": "ids-1"}))
    catalog = Catalog.open(root)
    vectors = np.random.default_rng(0).normal(size=(len(HOSTILE_IDS), shop.model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors, HOSTILE_IDS, tmp_path / "index", meta={"model_id": shop.model.model_id})
    app = create_app(Searcher(shop.model, index, catalog), watch_seconds=0)
    own = {pid: (root / f"images/{i}.png").read_bytes() for i, pid in enumerate(HOSTILE_IDS)}
    before = snapshot(tmp_path)
    with TestClient(app) as c:
        results = c.get("/search", params={"q": "product", "k": 100}).json()["results"]
        hits = {r["id"]: r for r in results}
        reached, served = [], []
        for pid in HOSTILE_IDS:
            rec.case(pid != "plain")
            ok, images_served = reaches(c, pid, hits.get(pid), own[pid])
            reached += [pid] if ok else []
            served += images_served
        rec.count_lost(HOSTILE_IDS, reached)
        rec.count_reads(sum(b not in own.values() for b in served))
        assert sorted(r["id"] for r in results) == sorted(HOSTILE_IDS)
        images = {}
        for r in results:
            images[r["id"]] = c.get(r["image_url"]).content          # the URL /search hands out
            assert images[r["id"]][:4] == b"\x89PNG", (r["id"], r["image_url"])
        for i, pid in enumerate(HOSTILE_IDS):
            from urllib.parse import quote
            p = c.get(f"/products/{quote(pid, safe='')}")
            assert p.status_code == 200 and p.json()["id"] == pid and p.json()["in_index"], (pid, p.text)
            again = c.get(p.json()["image_url"])                       # the URL /products hands out
            assert again.status_code == 200 and again.content == images[pid], pid
            assert Image.open(__import__("io").BytesIO(again.content)).getpixel((0, 0))[0] == 20 * i
        # "x/image" (an id) and the image of "x" (no such product) are told apart
        assert c.get("/products/x%2Fimage").json()["id"] == "x/image"
        assert c.get("/products/x/image").status_code == 404
        assert c.get("/products/AB/123").json()["id"] == "AB/123"      # unencoded, too (only ".../image" is ambiguous)
        rec.case()
        assert c.get("/products/%FF").status_code == 404              # not UTF-8: a 404, not a 500
    rec.count_writes(before, snapshot(tmp_path))
    rec.done()


# ------------------------------------------------------------------------------ 7. smaller ones
def test_healthz_reports_a_failed_index_reload(shop, tmp_path, reliability):
    # lost: products of the index served before that are not served after the failed reload;
    # writes outside: the service names no output, so it may write nothing at all
    rec = reliability("10. healthz after failed reload")
    index_dir = tmp_path / "index"
    build_shop_index(shop.model, shop.catalog, index_dir)
    app = create_app(Searcher.open(shop.model_dir, index_dir, model=shop.model), watch_seconds=0)
    holder = app.state.holder
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/healthz").json()["status"] == "ok"
        served = c.get("/healthz").json()["index_size"]
        meta = json.loads((index_dir / "meta.json").read_text())
        (index_dir / "meta.json").write_text(json.dumps({**meta, "model_id": "0000000000000000"}))
        before = snapshot(tmp_path)
        rec.case()                                # an index changed under the service that cannot load
        holder.poll().join()
        r = c.get("/healthz")
        rec.count_lost(served, r.json().get("index_size", 0))
        assert r.status_code == 503 and r.json()["status"] == "degraded", r.text
        assert "built with model" in r.json()["error"] and r.json()["index_size"] == 31
        assert c.get("/search", params={"q": "dress"}).status_code == 200   # the old index is still served
        rec.count_writes(before, snapshot(tmp_path))
        (index_dir / "meta.json").write_text(json.dumps({**meta, "updated_at": "now"}))  # fixed: reloads
        before = snapshot(tmp_path)
        holder.poll().join()
        rec.count_lost(served, c.get("/healthz").json().get("index_size", 0), "after the fix")
        assert c.get("/healthz").status_code == 200 and holder.generation == 1
        rec.count_writes(before, snapshot(tmp_path))
    rec.done()


def test_validation_error_does_not_echo_the_whole_input(client, shop, reliability):
    # writes outside: the service names no output (the shop it serves is watched)
    rec = reliability("10. 422 echo")
    before = snapshot(shop.root)
    big = "x" * 60_000  # as long as the test client lets a URL be (uvicorn: --h11-max-incomplete-event-size)
    rec.case(3)                                   # a 60,000-character q, a 50,000-digit k, a 1,000-byte body
    r = client.get("/search", params={"q": big})
    assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", "q"] and "60000 characters" in detail["input"]
    r = client.get("/search", params={"q": "dress", "k": "9" * 50_000})
    assert r.status_code == 422 and len(r.content) < 2_000
    assert client.request("GET", "/search", params={"q": "dress"}, content=b"x" * 1000).status_code == 413
    rec.count_writes(before, snapshot(shop.root))
    rec.done()


# ------------------------------------------------------------------------------ 8. key, CORS, loopback
def test_api_key_is_required_when_set(shop, monkeypatch, reliability):
    # writes outside: the service names no output (the shop it serves is watched)
    rec = reliability("API key")
    before = snapshot(shop.root)
    app = create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0, api_key="s3cret-key")
    with TestClient(app) as c:
        for path in ("/search?q=dress", "/filters", "/products/100", "/products/100/image"):
            rec.case(2)                           # no key, a wrong key
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "s3cret-key"}).status_code == 200, path
        assert "API key" in c.get("/filters").json()["detail"]
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # open
        assert c.get("/static/app.js").status_code == 200 and "X-API-Key" in c.get("/static/app.js").text
    monkeypatch.setenv("DASHCLIP_API_KEY", "from-env")
    with TestClient(create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0)) as c:
        rec.case()                                # no key, the key set in the environment
        assert c.get("/filters").status_code == 401
        assert c.get("/filters", headers={"X-API-Key": "from-env"}).status_code == 200
    monkeypatch.delenv("DASHCLIP_API_KEY")
    with TestClient(create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0)) as c:
        assert c.get("/filters").status_code == 200   # no key configured: open
    rec.count_writes(before, snapshot(shop.root))
    rec.done()


def test_cors_headers_only_for_configured_origins(shop, client, reliability):
    # writes outside: the service names no output (the shop it serves is watched)
    rec = reliability("CORS")
    before = snapshot(shop.root)
    origin = "https://shop.example"
    app = create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0, cors_origins=[origin])
    with TestClient(app) as c:
        r = c.get("/filters", headers={"Origin": origin})
        assert r.headers.get("access-control-allow-origin") == origin
        rec.case()                                # an origin not configured
        assert "access-control-allow-origin" not in c.get("/filters", headers={"Origin": "https://evil.example"}).headers
        pre = c.options("/search", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                            "Access-Control-Request-Headers": "X-API-Key"})
        assert pre.status_code == 200 and "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    # none by default
    rec.case()                                    # any origin, none configured
    assert "access-control-allow-origin" not in client.get("/filters", headers={"Origin": origin}).headers
    rec.count_writes(before, snapshot(shop.root))
    rec.done()


def test_serve_defaults_to_loopback_and_passes_the_key(shop, monkeypatch, reliability):
    # writes outside: `serve` names no output (the shop it serves is watched)
    rec = reliability("loopback default")
    import uvicorn

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setenv("DASHCLIP_API_KEY", "k-from-env")
    before = snapshot(shop.root)
    rec.case()                                    # `serve` without --host
    code, out = invoke("serve", "--model", shop.model_dir, "--index", shop.index_dir, "--cors-origin",
                       "https://a.example", "--cors-origin", "https://b.example")
    assert code == 0, out
    assert ran["host"] == "127.0.0.1" and ran["limit_concurrency"] >= 1
    with TestClient(ran["app"]) as c:
        rec.case()                                # no key, the key set in the environment
        assert c.get("/filters").status_code == 401
        assert c.get("/filters", headers={"X-API-Key": "k-from-env", "Origin": "https://b.example"}) \
            .headers["access-control-allow-origin"] == "https://b.example"
    rec.count_writes(before, snapshot(shop.root))
    rec.done()
