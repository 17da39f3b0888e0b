"""LLM labeler: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, OpenAI, a fine-tuned model).

Configured from the environment:
    DASHCLIP_LLM_BASE_URL  (or OPENAI_BASE_URL; default https://api.openai.com/v1)
    DASHCLIP_LLM_MODEL     the model name, e.g. gpt-4o-mini, ft:gpt-4o-mini:acme::abc, llama3.1:8b
    DASHCLIP_LLM_API_KEY   (or OPENAI_API_KEY; optional for local servers)

The prompt is the grading rubric, a few seed grades as worked examples, then the query and the product's
title, category and attributes; the model must answer strict JSON {"grade": 0|1|2, "confidence": 0..1}.
429 and 5xx answers and timeouts are retried with exponential backoff; a malformed answer is a failure
kept with its raw text (never a silent 0). Requests run concurrently up to a limit, and successful
answers are cached on disk by (model, prompt hash), so a re-run costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import GRADE_NAMES, Grade, Pair
from ..grades import GRADE_VALUES

RUBRIC = """You judge how relevant a product is to a shopper's search query in an online store.
Grades:
2 = highly relevant: the product is what the shopper asked for (right type, and it matches every stated
    constraint such as colour, gender/recipient, occasion/usage).
1 = somewhat relevant: the right type of product but a stated constraint does not hold (wrong colour,
    gender or occasion), or a closely related product that matches the constraints.
0 = irrelevant: a different kind of product.
Read intent, synonyms, regional words and typos the way a shopper means them ("for her" = women,
"sneakers" = casual or sports shoes, "tshrt" = t-shirt). Brand and material words that the product
data cannot confirm do not lower the grade.
Answer with JSON only, no other text: {"grade": 0, 1 or 2, "confidence": a number from 0 to 1}"""

ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "DASHCLIP_LLM_BASE_URL", "DASHCLIP_LLM_MODEL", "DASHCLIP_LLM_API_KEY"


def product_block(pair: Pair) -> str:
    p = pair.product or {}
    lines = [f"Title: {p.get('title') or pair.product_text}"]
    if p.get("category"):
        lines.append(f"Category: {p['category']}")
    skip = {"id", "title", "category", "image", "text"}
    attrs = [f"{k}: {v}" for k, v in p.items() if k not in skip and v not in (None, "")]
    if attrs:
        lines.append("Attributes: " + "; ".join(attrs))
    if p.get("text"):
        lines.append(f"Description: {p['text']}")
    return "\n".join(lines)


def user_message(pair: Pair) -> str:
    return f"Query: {pair.query}\n{product_block(pair)}"


def answer_json(grade: int, confidence: float = 1.0) -> str:
    return json.dumps({"grade": int(grade), "confidence": round(float(confidence), 2)})


def build_messages(pair: Pair, examples=()) -> list[dict]:
    """Chat messages: rubric, then each example (Pair, grade) as a user/assistant turn, then the pair."""
    msgs = [{"role": "system", "content": RUBRIC}]
    for ex_pair, ex_grade in examples:
        msgs += [{"role": "user", "content": user_message(ex_pair)},
                 {"role": "assistant", "content": answer_json(ex_grade)}]
    msgs.append({"role": "user", "content": user_message(pair)})
    return msgs


def parse_answer(text: str) -> tuple[int, float]:
    """(grade, confidence) from the model's answer; ValueError when it is not the JSON asked for.

    Tolerates a ```json fence around the object (common) but nothing else."""
    s = (text or "").strip()
    m = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", s, flags=re.S)
    if m:
        s = m.group(1)
    obj = json.loads(s)
    if not isinstance(obj, dict) or "grade" not in obj:
        raise ValueError("no 'grade' key")
    g = obj["grade"]
    if isinstance(g, bool) or not isinstance(g, (int, float, str)) or str(g).strip() not in ("0", "1", "2"):
        raise ValueError(f"grade {g!r} is not 0, 1 or 2")
    conf = obj.get("confidence", 1.0)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
        raise ValueError(f"confidence {conf!r} is not a number in [0, 1]")
    return int(str(g).strip()), float(conf)


class HTTPFailure(Exception):
    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


class LLMLabeler:
    name = "llm"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, examples=(),
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 concurrency: int = 8, cache_dir: str | Path | None = None, temperature: float = 0.0):
        import httpx

        if not model:
            raise ValueError(f"no LLM model given (set {ENV_MODEL})")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.examples = list(examples or [])
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.concurrency, self.temperature = max(1, concurrency), temperature
        self.cache_dir = Path(cache_dir) if cache_dir else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers,
                                   limits=httpx.Limits(max_connections=self.concurrency))
        spec = json.dumps([self.model, RUBRIC, [(user_message(p), g) for p, g in self.examples], temperature])
        self.version = hashlib.sha256(spec.encode()).hexdigest()[:12]
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failures": 0}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, examples=(), **kw) -> "LLMLabeler":
        base = os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        model = kw.pop("model", None) or os.environ.get(ENV_MODEL)
        return cls(base, model, key, examples=examples, **kw)

    # ---- one pair -------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _cache_path(self, messages) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps([self.model, self.temperature, messages]).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _request(self, messages) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            self._count("requests")
            try:
                r = self.client.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException:
                last = HTTPFailure(f"timed out after {self.client.timeout.read}s")
                continue
            except httpx.TransportError as e:
                last = HTTPFailure(f"connection error: {e}")
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = HTTPFailure(f"HTTP {r.status_code}", raw=r.text[:2000])
                continue
            if r.status_code != 200:  # 400/401/404: retrying cannot help
                raise HTTPFailure(f"HTTP {r.status_code}", raw=r.text[:2000])
            try:
                return r.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise HTTPFailure("response is not a chat completion", raw=r.text[:2000]) from None
        raise HTTPFailure(f"{last} (gave up after {self.max_retries + 1} tries)", raw=last.raw)

    def grade_one(self, pair: Pair) -> Grade:
        messages = build_messages(pair, self.examples)
        cache = self._cache_path(messages)
        if cache is not None and cache.exists():
            self._count("cache_hits")
            g, c = parse_answer(json.loads(cache.read_text())["content"])
            return Grade(g, c)
        try:
            content = self._request(messages)
        except HTTPFailure as e:
            self._count("failures")
            return Grade(None, 0.0, error=str(e), raw=e.raw)
        try:
            g, c = parse_answer(content)
        except (ValueError, TypeError) as e:
            self._count("failures")
            return Grade(None, 0.0, error=f"malformed answer: {e}", raw=content)
        if cache is not None:
            from ...io import write_json

            write_json(cache, {"model": self.model, "content": content})
        return Grade(g, c)

    def grade(self, pairs: list[Pair]) -> list[Grade]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.grade_one, pairs))


def few_shot_examples(seed, catalog, per_grade: int = 2, random_state: int = 0) -> list[tuple[Pair, int]]:
    """A few training seed grades per grade value, as (Pair, grade) worked examples for the prompt."""
    from ..grades import split_by_query
    from . import pairs_from

    train, _ = split_by_query(seed)
    picked = [g.sample(min(per_grade, len(g)), random_state=random_state) for _, g in train.groupby("grade")]
    if not picked:
        return []
    rows = (__import__("pandas").concat(picked).sample(frac=1.0, random_state=random_state))
    pairs = pairs_from(catalog, rows["query"].tolist(), rows["product_id"].tolist())
    return list(zip(pairs, rows["grade"].astype(int).tolist()))


assert set(GRADE_NAMES) == set(GRADE_VALUES)
