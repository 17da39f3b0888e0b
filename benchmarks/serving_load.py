"""Load generator for benchmarks/serving_latency.py: a separate process that sends GET /search requests
over loopback, keeping `--concurrency` requests in flight on keep-alive connections, until `--requests` are
done or `--max-seconds` have passed. Prints one JSON object: per-request latencies (ms), status counts,
errors, wall time, and the CPU time this process spent per request.

    python benchmarks/serving_load.py --url http://127.0.0.1:8765 --requests-file reqs.jsonl \
        --concurrency 8 --requests 8000 --max-seconds 300 [--client raw|httpx]

`--client raw` (default): HTTP/1.1 written and read on asyncio streams, as wrk or hey do. The generator shares
the 2 cores with the server it measures, so its own cost is part of every figure: httpx spends about as much
CPU per request as the server's HTTP layer does, and that is the client, not the service. `--client httpx`
keeps the earlier generator for comparison. Both check every answer: status 200 and a non-empty `results`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlencode, urlsplit


def _check(status: int, body: bytes, params: dict, errors: list[str]) -> None:
    if status != 200:
        errors.append(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    elif not json.loads(body).get("results"):
        errors.append(f"no results for {params}")


class RawConnection:
    """One keep-alive HTTP/1.1 connection: a GET, then its response read by Content-Length (the service
    never sends chunked answers to /search)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def get(self, target: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode("ascii"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise ValueError("chunked answer: the raw client reads Content-Length only")
        if length is None:
            raise ValueError("answer without Content-Length")
        body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def run(url: str, requests: list[dict], concurrency: int, total: int, max_seconds: float,
              warmup: int, client: str = "raw") -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    next_i = 0
    targets = ["/search?" + urlencode(p) for p in requests]     # encoded once, outside the timed loop
    if client == "raw":
        parts = urlsplit(url)
        conns = [RawConnection(parts.hostname, parts.port or 80) for _ in range(concurrency)]

        async def get(slot: int, i: int) -> tuple[int, bytes]:
            try:
                return await conns[slot].get(targets[i])
            except Exception:
                await conns[slot].close()     # a broken connection is not reused
                raise

        async def close_all():
            for c in conns:
                await c.close()
    else:
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        hx = httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0)

        async def get(slot: int, i: int) -> tuple[int, bytes]:
            r = await hx.get("/search", params=requests[i])
            return r.status_code, r.content

        async def close_all():
            await hx.aclose()

    try:
        for i in range(warmup):  # connections and caches warm, not counted
            await get(i % concurrency, i % len(requests))
        started = time.perf_counter()
        cpu0 = time.process_time()
        deadline = started + max_seconds

        async def worker(slot: int):
            nonlocal next_i
            while next_i < total and time.perf_counter() < deadline:
                i = next_i % len(requests)
                next_i += 1
                t0 = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(get(slot, i), 30.0)
                    ms = (time.perf_counter() - t0) * 1000
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    _check(status, body, requests[i], errors)
                    latencies.append(ms)
                except Exception as e:  # a refused or reset connection counts as an error, not a crash
                    errors.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(worker(s) for s in range(concurrency)))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        await close_all()
    done = len(latencies) + sum(1 for e in errors if not e.startswith(("HTTP", "no results")))
    return {"concurrency": concurrency, "client": client, "requests": done,
            "completed": len(latencies), "wall_seconds": wall, "statuses": statuses,
            "errors": len(errors), "error_examples": errors[:5], "latencies_ms": latencies,
            "client_cpu_ms_per_request": round(cpu * 1000 / done, 3) if done else None,
            "stopped_by_time": next_i < total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--requests-file", required=True, help="JSONL of query-string params for /search")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    args = ap.parse_args()
    with open(args.requests_file, encoding="utf-8") as f:
        requests = [json.loads(line) for line in f if line.strip()]
    result = asyncio.run(run(args.url, requests, args.concurrency, args.requests, args.max_seconds, args.warmup,
                             args.client))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
