"""Load generator for benchmarks/serving_latency.py: a separate process that sends GET /search requests
over loopback with asyncio + httpx, keeping `--concurrency` requests in flight, until `--requests` are done or
`--max-seconds` have passed. Prints one JSON object: per-request latencies (ms), status counts, errors, wall time.

    python benchmarks/serving_load.py --url http://127.0.0.1:8765 --requests-file reqs.jsonl \
        --concurrency 8 --requests 8000 --max-seconds 300
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def run(url: str, requests: list[dict], concurrency: int, total: int, max_seconds: float,
              warmup: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        for i in range(warmup):  # connections and caches warm, not counted
            await client.get("/search", params=requests[i % len(requests)])
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker():
            nonlocal next_i
            while next_i < total and time.perf_counter() < deadline:
                params = requests[next_i % len(requests)]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get("/search", params=params)
                    ms = (time.perf_counter() - t0) * 1000
                    statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    elif not r.json().get("results"):
                        errors.append(f"no results for {params}")
                    latencies.append(ms)
                except Exception as e:  # a refused or reset connection counts as an error, not a crash
                    errors.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies) + sum(1 for e in errors if not e.startswith(("HTTP", "no results"))),
            "completed": len(latencies), "wall_seconds": wall, "statuses": statuses,
            "errors": len(errors), "error_examples": errors[:5], "latencies_ms": latencies,
            "stopped_by_time": next_i < total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--requests-file", required=True, help="JSONL of query-string params for /search")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    with open(args.requests_file, encoding="utf-8") as f:
        requests = [json.loads(line) for line in f if line.strip()]
    result = asyncio.run(run(args.url, requests, args.concurrency, args.requests, args.max_seconds, args.warmup))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
