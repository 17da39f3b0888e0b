"""The llm labeler against a small chat-completions server started by the test (no network, no model)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from dashclip.data.catalog import Catalog
from dashclip.labeling.grading import grade_pairs
from dashclip.labeling.labelers import Pair
from dashclip.labeling.labelers.llm import RUBRIC, LLMLabeler
from test_labeling_support import write_catalog

GOOD = '{"grade": 2, "confidence": 0.9}'


class ChatServer:
    """Answers POST /v1/chat/completions with whatever `script(n, body)` returns: (status, content, delay).

    `n` counts requests from 1. Records every request body and header, and the most requests in flight."""

    def __init__(self, script):
        self.script, self.requests, self.inflight, self.max_inflight = script, [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    n = len(server.requests)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    status, content, delay = server.script(n, body)
                    time.sleep(delay)
                    payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                               if status == 200 else json.dumps({"error": content}))
                    data = payload.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script):
        servers.append(ChatServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def pair(query="red dress", title="Red Floral Dress") -> Pair:
    return Pair(query, f"{title} | Dresses", {"id": 1, "title": title, "category": "Dresses", "baseColour": "Red"})


def labeler(url, **kw) -> LLMLabeler:
    kw = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0, **kw}
    return LLMLabeler(url, "test-model", "sk-test", **kw)


def test_good_answer_from_env_with_rubric_and_few_shot(serve, monkeypatch):
    srv = serve(lambda n, body: (200, GOOD, 0))
    monkeypatch.setenv("DASHCLIP_LLM_BASE_URL", srv.url)
    monkeypatch.setenv("DASHCLIP_LLM_MODEL", "ft:test-model")
    monkeypatch.setenv("DASHCLIP_LLM_API_KEY", "sk-env")
    examples = [(pair("blue jeans", "Blue Slim Jeans"), 2), (pair("blue jeans", "Black Watch"), 0)]
    lab = LLMLabeler.from_env(examples=examples, backoff=0.01)
    [g] = lab.grade([pair()])
    assert g.ok and (g.grade, g.confidence) == (2, 0.9)
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-env"
    assert req["body"]["model"] == "ft:test-model"
    msgs = req["body"]["messages"]
    assert msgs[0] == {"role": "system", "content": RUBRIC} and "JSON" in RUBRIC
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert json.loads(msgs[2]["content"])["grade"] == 2 and "Title: Black Watch" in msgs[3]["content"]
    assert msgs[-1]["content"].startswith("Query: red dress\nTitle: Red Floral Dress")
    assert "baseColour: Red" in msgs[-1]["content"]


def test_malformed_json_is_a_failure_with_raw_text(serve, tmp_path):
    answers = {"red dress": "Sure! I'd say grade 2.", "blue dress": '{"grade": 5}', "green dress": GOOD}
    srv = serve(lambda n, body: (200, answers[body["messages"][-1]["content"].split("\n")[0][7:]], 0))
    lab = labeler(srv.url, cache_dir=tmp_path / "cache")
    bad, out_of_range, good = lab.grade([pair("red dress"), pair("blue dress"), pair("green dress")])
    assert not bad.ok and bad.grade is None and "malformed" in bad.error and bad.raw == "Sure! I'd say grade 2."
    assert not out_of_range.ok and "not 0, 1 or 2" in out_of_range.error
    assert good.ok and good.grade == 2
    # Through a grading run: failures are kept apart with their raw answer, never written as grade 0.
    cat = Catalog.open(write_catalog(tmp_path / "cat", n=12))
    pid = cat.products["id"].iloc[0]
    pairs = pd.DataFrame({"qid": ["a", "b", "c"], "query": ["red dress", "blue dress", "green dress"],
                          "product_id": [pid] * 3})
    summary = grade_pairs(pairs, cat, lab, tmp_path / "run", shard_size=8)
    grades = pd.read_parquet(tmp_path / "run" / "grades-00000.parquet")
    fails = pd.read_parquet(tmp_path / "run" / "failures-00000.parquet")
    assert grades["query"].tolist() == ["green dress"] and summary["failures_total"] == 2
    assert set(fails["query"]) == {"red dress", "blue dress"} and "Sure! I'd say grade 2." in set(fails["raw"])
    # A malformed answer is not cached: the next run asks again.
    n = len(srv.requests)
    labeler(srv.url, cache_dir=tmp_path / "cache").grade([pair("red dress")])
    assert len(srv.requests) == n + 1


def test_429_then_success_is_retried(serve):
    srv = serve(lambda n, body: (429, "slow down", 0) if n == 1 else (200, '{"grade": 1, "confidence": 0.6}', 0))
    lab = labeler(srv.url)
    [g] = lab.grade([pair()])
    assert g.ok and (g.grade, g.confidence) == (1, 0.6)
    assert len(srv.requests) == 2 and lab.stats["retries"] == 1


def test_500_until_retries_run_out(serve):
    srv = serve(lambda n, body: (500, "boom", 0))
    lab = labeler(srv.url, max_retries=2)
    [g] = lab.grade([pair()])
    assert not g.ok and g.grade is None
    assert "HTTP 500" in g.error and "gave up after 3 tries" in g.error and "boom" in g.raw
    assert len(srv.requests) == 3


def test_slow_answer_past_the_timeout(serve):
    srv = serve(lambda n, body: (200, GOOD, 1.0))
    lab = labeler(srv.url, timeout=0.2, max_retries=1)
    t0 = time.time()
    [g] = lab.grade([pair()])
    assert not g.ok and "timed out" in g.error and len(srv.requests) == 2
    assert time.time() - t0 < 1.5  # the client gave up; it did not wait for the slow answers


def test_cache_hit_on_rerun_and_concurrency_limit(serve, tmp_path):
    srv = serve(lambda n, body: (200, GOOD, 0.05))
    pairs = [pair(f"dress {i}") for i in range(9)]
    first = labeler(srv.url, cache_dir=tmp_path / "cache", concurrency=3).grade(pairs)
    assert all(g.ok for g in first) and len(srv.requests) == 9
    assert 1 < srv.max_inflight <= 3
    again = labeler(srv.url, cache_dir=tmp_path / "cache", concurrency=3)
    second = again.grade(pairs)
    assert len(srv.requests) == 9 and again.stats["cache_hits"] == 9 and again.stats["requests"] == 0
    assert [(g.grade, g.confidence) for g in second] == [(g.grade, g.confidence) for g in first]
    # Another model is another cache key.
    LLMLabeler(srv.url, "other-model", cache_dir=tmp_path / "cache").grade(pairs[:1])
    assert len(srv.requests) == 10
