"""The HTTP service: every endpoint, the 4xx cases, path traversal attempts, hot swap of a rebuilt index,
and Schemathesis against the OpenAPI schema (no 5xx)."""
from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from dashclip.serving.search import Searcher
from dashclip.serving.service import create_app
from test_search_fixtures import NO_IMAGE_ID, build_shop_index, client, shop  # noqa: F401 (fixtures)


def test_search(client, shop):
    r = client.get("/search", params={"q": "  red   dress ", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "red dress" and body["k"] == 5 and body["filters"] == {} and body["hybrid"] is False
    assert body["took_ms"] >= 0
    results = body["results"]
    assert [x["rank"] for x in results] == [1, 2, 3, 4, 5]
    expected = Searcher(shop.model, shop.index, shop.catalog).search("red dress", k=5)
    assert [x["id"] for x in results] == [h.id for h in expected]
    first = results[0]
    assert set(first) == {"id", "title", "category", "score", "rank", "image_url", "attributes", "rerank_score"}
    assert first["rerank_score"] is None and body["reranked"] is False   # no re-ranker in this service
    assert first["image_url"] == f"/products/{first['id']}/image"
    assert set(first["attributes"]) == {"gender", "baseColour", "season"}


def test_search_filters_and_hybrid(client):
    r = client.get("/search", params=[("q", "watch"), ("k", 50), ("filter", "gender:men"),
                                      ("filter", "baseColour:Green"), ("filter", "baseColour:Black")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filters"] == {"gender": ["Men"], "baseColour": ["Green", "Black"]}
    assert len(body["results"]) == 4  # T-shirt and watch for men, in green and in black
    assert all(x["attributes"]["gender"] == "Men" for x in body["results"])
    r = client.get("/search", params={"q": "green watch", "k": 3, "hybrid": "true"})
    assert r.status_code == 200 and r.json()["hybrid"] is True
    assert "Green" in r.json()["results"][0]["title"]
    assert r.json()["results"][0]["score"] < 2 / 61 + 1e-9


@pytest.mark.parametrize("params, status, message", [
    ({"q": ""}, 422, "at least 1 character"),
    ({}, 422, "Field required"),
    ({"q": "   "}, 400, "query is empty"),
    ({"q": "\x00\u200b"}, 400, "query is empty"),
    ({"q": "a" * 257}, 422, "at most 256 characters"),
    ({"q": "dress", "k": 0}, 422, "greater than or equal to 1"),
    ({"q": "dress", "k": 101}, 422, "less than or equal to 100"),
    ({"q": "dress", "k": "ten"}, 422, "valid integer"),
    ({"q": "dress", "filter": "gender"}, 400, "field:value"),
    ({"q": "dress", "filter": "size:M"}, 400, "unknown filter field 'size'"),
    ({"q": "dress", "filter": "gender:Robots"}, 400, "unknown value 'Robots' for filter 'gender'"),
    ({"q": "dress", "filter": ["gender:Women"] * 33}, 400, "the limit is 32"),
])
def test_search_bad_input_is_4xx(client, params, status, message):
    r = client.get("/search", params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else " ".join(d["msg"] for d in detail)
    assert message in text


def test_products(client, shop):
    r = client.get("/products/100")
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["id"] == 100 and p["title"] == "Red Summer Dress for Women" and p["category"] == "Dresses"
    assert p["image_url"] == "/products/100/image" and p["in_index"] is True
    assert p["attributes"] == {"gender": "Women", "baseColour": "Red", "season": "Summer"}
    r = client.get(f"/products/{NO_IMAGE_ID}")
    assert r.status_code == 200 and r.json()["image_url"] is None
    for bad in ("12345", "abc", "1.5", " "):
        r = client.get(f"/products/{bad}")
        assert r.status_code == 404 and "unknown product id" in r.json()["detail"], bad


def test_product_image(client, shop):
    r = client.get("/products/100/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (shop.catalog_dir / "images/100.jpg").read_bytes()
    r = client.get(f"/products/{NO_IMAGE_ID}/image")
    assert r.status_code == 404 and "has no image" in r.json()["detail"]
    r = client.get("/products/77777/image")
    assert r.status_code == 404 and "unknown product id" in r.json()["detail"]


@pytest.mark.parametrize("path", [
    "/products/../../../../etc/passwd/image",
    "/products/..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/products/%2e%2e%2fmanifest.json/image",
    "/products/images%2F100.jpg/image",
    "/products/..%5C..%5Cmanifest.json/image",
    "/products/100%2F..%2F..%2Fcatalog.parquet/image",
    "/products/%00/image",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/search.py",
    "/static/..%2F..%2Fsettings.py",
])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code in (404, 400, 422), (path, r.status_code)
    assert b"root:" not in r.content and b"PAR1" not in r.content and b"import " not in r.content
    assert b"content_hash" not in r.content


def test_image_path_from_a_tampered_catalog_stays_inside(shop, tmp_path):
    """Even a catalog row whose image path points outside the catalog dir is not served."""
    from dataclasses import replace
    secret = shop.root / "secret.jpg"
    secret.write_bytes((shop.catalog_dir / "images/100.jpg").read_bytes())
    products = shop.catalog.products.copy()
    products.loc[products["id"] == 100, "image"] = "../secret.jpg"
    catalog = replace(shop.catalog, products=products)
    catalog.__dict__.pop("row_of", None)
    app = create_app(Searcher(shop.model, shop.index, catalog, shop.model.model_id), watch_seconds=0)
    with TestClient(app) as c:
        r = c.get("/products/100/image")
        assert r.status_code == 404 and "missing from the catalog" in r.json()["detail"]


def test_filters_healthz_page_openapi(client, shop):
    r = client.get("/filters")
    assert r.status_code == 200
    assert r.json() == {"category": ["Accessories", "Dresses", "Heels", "Tshirts", "Watches"],
                        "gender": ["Men", "Unisex", "Women"],
                        "baseColour": ["Black", "Blue", "Green", "Multi", "Red", "White"],
                        "season": ["Summer", "Winter"]}
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model_id"] == shop.model.model_id and h["index_size"] == 31
    assert h["index_built_at"] == shop.index.meta["built_at"] and h["index_generation"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="q"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    # Offline: nothing is fetched from another host (the SVG namespace URI is a name, not a fetch).
    import re
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://www.w3.org/2000/svg", ""))
    schema = client.get("/openapi.json").json()
    assert {"/search", "/products/{product_id}", "/products/{product_id}/image", "/filters", "/healthz"} <= \
        set(schema["paths"])
    params = {p["name"]: p["schema"] for p in schema["paths"]["/search"]["get"]["parameters"]}
    assert params["q"]["maxLength"] == 256 and params["k"]["maximum"] == 100 and params["k"]["minimum"] == 1


def test_create_app_from_paths_and_factory(shop):
    with TestClient(create_app(model_dir=shop.model_dir, index_dir=shop.index_dir, watch_seconds=0)) as c:
        assert c.get("/healthz").json()["index_size"] == 31
    app = create_app(lambda: Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0)
    with TestClient(app) as c:
        assert c.get("/search", params={"q": "dress"}).status_code == 200
    with pytest.raises(ValueError, match="model_dir and index_dir"):
        create_app()


# ------------------------------------------------------------------------------------------ hot swap
def test_hot_swap_keeps_answering(shop, tmp_path):
    """Rebuild the index dir under a running service: it answers every request during the rebuild and the
    reload, then serves the new index (here: one product removed) with generation 1."""
    index_dir = tmp_path / "index"
    build_shop_index(shop.model, shop.catalog, index_dir)
    app = create_app(Searcher.open(shop.model_dir, index_dir, model=shop.model), watch_seconds=0.05)
    holder = app.state.holder
    statuses, stop = [], threading.Event()

    with TestClient(app) as c:
        def hammer():
            while not stop.is_set():
                r = c.get("/search", params={"q": "red dress", "k": 50})
                statuses.append((r.status_code, len(r.json().get("results", []))))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.3)
            assert c.get("/healthz").json()["index_size"] == 31
            assert c.get("/search", params={"q": "red dress", "hybrid": "true"}).status_code == 200
            old_searcher = holder.current
            build_shop_index(shop.model, shop.catalog, index_dir, drop_ids=[100])  # atomic rebuild
            deadline = time.time() + 20
            while holder.generation == 0 and time.time() < deadline:
                time.sleep(0.05)
            assert holder.generation == 1, holder.last_error
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join()
        health = c.get("/healthz").json()
        assert health["index_size"] == 30 and health["index_generation"] == 1
        assert holder.current is not old_searcher and holder.current.model is old_searcher.model
        assert holder.current.has_keyword_index  # hybrid was in use, so BM25 was built before the swap
        assert 100 not in [x["id"] for x in c.get("/search", params={"q": "red dress", "k": 50}).json()["results"]]
        assert c.get("/products/100").json()["in_index"] is False

        # A broken rebuild (another model's index) is refused; the service keeps the last good one.
        import json
        meta = json.loads((index_dir / "meta.json").read_text())
        meta["model_id"] = "0000000000000000"
        (index_dir / "meta.json").write_text(json.dumps(meta))
        reload = holder.poll()      # None when the watcher (every 0.05 s) has already started that reload
        if reload is not None:
            reload.join()
        deadline = time.time() + 20
        while "built with model" not in (holder.last_error or "") and time.time() < deadline:
            time.sleep(0.05)
        assert holder.generation == 1 and "built with model" in holder.last_error
        assert c.get("/search", params={"q": "dress"}).status_code == 200

    assert statuses and {s for s, _ in statuses} == {200}
    assert {n for _, n in statuses} <= {31, 30} and 30 in {n for _, n in statuses}  # old, then new


# ------------------------------------------------------------------------------------------ schemathesis
def test_schemathesis_finds_no_5xx(client):
    """Property-based requests from the OpenAPI schema (bounded): no server error, responses match it."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures, calls = [], {}
    for path, operation in [("/search", "GET"), ("/products/{product_id}", "GET"),
                            ("/products/{product_id}/image", "GET"), ("/filters", "GET"), ("/healthz", "GET")]:
        op = schema[path][operation]

        @given(case=op.as_strategy())
        @settings(max_examples=40 if path == "/search" else 15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(checks=checks)
            calls.setdefault(path, set()).add(response.status_code)

        try:
            run()
        except Exception as e:  # collect every operation's failure, then report them together
            failures.append(f"{path}: {e}")
    assert not failures, "\n".join(failures)
    assert set(calls) == {"/search", "/products/{product_id}", "/products/{product_id}/image", "/filters", "/healthz"}
    assert all(code < 500 for codes in calls.values() for code in codes), calls
    assert 200 in calls["/search"] and calls["/search"] & {400, 422}, calls  # it did reach both kinds of answer


# ------------------------------------------------------------------------------------------ dashclip serve
def test_serve_command(shop, monkeypatch):
    """`dashclip serve` loads the searcher, prints the URL and hands the app to uvicorn (stubbed here)."""
    import uvicorn
    from typer.testing import CliRunner

    from dashclip.cli import app as cli

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level, **kw: ran.update(app=app, host=host, port=port, **kw))
    result = CliRunner().invoke(cli, ["serve", "--model", str(shop.model_dir), "--index", str(shop.index_dir),
                                      "--port", "8123"], terminal_width=200)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0, output
    assert "http://localhost:8123/" in " ".join(output.split()) and ran["host"] == "127.0.0.1" and ran["port"] == 8123
    with TestClient(ran["app"]) as c:
        assert c.get("/healthz").json()["index_size"] == 31
    result = CliRunner().invoke(cli, ["serve", "--model", str(shop.model_dir), "--index", str(shop.root / "missing")])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2 and "missing" in output and "Traceback" not in output
