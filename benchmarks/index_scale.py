"""Scale benchmark: 1,000,000 random 256-d unit vectors in FAISS indexes (`dashclip.index`): HNSW, and a
compressed scan re-ranked exactly.

For each index it measures the build (time, RSS growth, bytes on disk) and sweeps the setting that trades
speed for recall: recall@10 against exact search (FAISS IndexFlatIP) and single-query latency (p50/p99, one
thread, through `VectorIndex.search` and through the bare FAISS index). Two kinds of index:

  D:M:efC    HNSW (`HNSW<M>,Flat`, efConstruction efC), sweeping efSearch (--ef)
  D:pqM      a compressed scan re-ranked exactly (`PQ<M>x4fs,RFlat`: every vector's M-nibble code is
             scanned with FAISS fast-scan, the best k*k_factor are re-scored with their float vectors),
             sweeping k_factor (--k-factor). Its floor is reading the codes: the benchmark times one
             sequential read of that many bytes on 1 thread.

Two datasets D:

  random     uniformly random unit vectors, queried with new random unit vectors: the case the target
             is stated for, and the hardest there is. In 256 dimensions random points are nearly
             equidistant (inner products ~0 +- 0.06), so the true top-10 barely stands out from the
             rest and HNSW must visit a large part of the graph to find it.
  clustered  the same count drawn around 20,000 random centres (cosine ~0.7 to the centre), queried with
             new draws from the same mixture: closer to real embeddings, where neighbours stand out.

    python benchmarks/index_scale.py [--n 1000000] [--dim 256] [--queries 1000]
                                     [--runs random:32:80 random:pq128 clustered:32:80 ...]
                                     [--ef 16 32 ...] [--k-factor 1 2 4 ...]
                                     [--build-threads 1] [--work /tmp/dashclip-index-scale]

Target (issue 6): recall@10 >= 0.95 with p50 <= 2 ms. Writes benchmarks/results/index_scale.json and .md,
stamped with the date, the machine and its load average.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--runs", nargs="+", default=["random:32:80", "random:48:160", "random:pq64", "random:pq128",
                                                 "clustered:32:80", "clustered:pq128"],
                   help="dataset:M:efConstruction (HNSW) or dataset:pqM (PQ fast-scan + exact re-ranking)")
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--k-factor", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512])
    p.add_argument("--build-threads", type=int, default=1,
                   help="OpenMP threads for building and ground truth (searches are timed on 1 thread)")
    p.add_argument("--vectors", default=None, help="dataset 'embeddings': a .npy of product embeddings (e.g. an "
                   "embeddings dir's fused.npy); --n and --dim are read from it")
    p.add_argument("--query-vectors", default=None, help="dataset 'embeddings': a .npy of encoded queries")
    p.add_argument("--work", default="/tmp/dashclip-index-scale")
    p.add_argument("--out", default=None, help="results name (default: index_scale)")
    p.add_argument("--append", action="store_true",
                   help="add these runs to the existing results (same --n, --dim, --queries) instead of "
                        "starting new ones")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before numpy/faiss start their thread pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.build_threads)

import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from dashclip.index import build_index  # noqa: E402
from dashclip.index.base import now_iso  # noqa: E402
from dashclip.index.base import data_dir  # noqa: E402
from dashclip.index.faiss_index import INDEX_FILE, FaissIndex, recall_at_k  # noqa: E402
from dashclip.io import read_json, write_json, write_text  # noqa: E402

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RECALL, TARGET_P50_MS = 0.95, 2.0




def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def release_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def unit_vectors(rng, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        v = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        out[s:s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def clustered_vectors(rng, centres: np.ndarray, n: int, chunk: int = 100_000) -> np.ndarray:
    """Points around random centres: centre + a random unit vector, normalised (cosine ~0.71 to it)."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        v = centres[rng.integers(0, len(centres), m)] + unit_vectors(rng, m, centres.shape[1])
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries) of a dataset; the same seed gives the same data."""
    rng = np.random.default_rng(0)
    if name == "random":
        return unit_vectors(rng, ARGS.n, ARGS.dim), unit_vectors(rng, ARGS.queries, ARGS.dim)
    if name == "clustered":
        centres = unit_vectors(rng, 20_000, ARGS.dim)
        return clustered_vectors(rng, centres, ARGS.n), clustered_vectors(rng, centres, ARGS.queries)
    if name == "embeddings":     # real product embeddings and encoded shopper queries (benchmarks/scale.py)
        if not (ARGS.vectors and ARGS.query_vectors):
            raise SystemExit("dataset 'embeddings' needs --vectors and --query-vectors")
        vectors = np.ascontiguousarray(np.load(ARGS.vectors), dtype=np.float32)
        queries = np.ascontiguousarray(np.load(ARGS.query_vectors), dtype=np.float32)
        if vectors.shape[1] != queries.shape[1]:
            raise SystemExit(f"--vectors are {vectors.shape[1]}-d but --query-vectors {queries.shape[1]}-d")
        return vectors, queries
    raise SystemExit(f"unknown dataset {name!r}: random, clustered or embeddings")


def ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float]:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    t0 = time.perf_counter()
    _, truth = flat.search(queries, k)
    batch_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries[:20]:
        t = time.perf_counter()
        flat.search(q[None], k)
        times.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(ARGS.build_threads)
    del flat
    return truth, round(float(np.median(times) * 1e3), 2)


def percentile_ms(times: list[float], p: float) -> float:
    return round(float(np.percentile(times, p)) * 1e3, 3)


def read_ms(nbytes: int, repeats: int = 20) -> float:
    """p50 time to read `nbytes` once, sequentially, on 1 thread: the floor of any scan over that many bytes."""
    a = np.ones(nbytes // 8, dtype=np.int64)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 3)


def index_spec(spec: str) -> dict:
    """'random:32:80' -> HNSW32, efConstruction 80, sweeping efSearch; 'random:pq128' -> PQ128x4fs,RFlat,
    sweeping k_factor."""
    data, *rest = spec.split(":")
    if len(rest) == 1 and rest[0].startswith("pq"):
        m = int(rest[0][2:])
        return {"dataset": data, "factory": f"PQ{m}x4fs,RFlat", "pq_M": m, "setting": "k_factor",
                "values": ARGS.k_factor, "build": {"k_factor": 1}}
    m, efc = (int(x) for x in rest)
    return {"dataset": data, "factory": f"HNSW{m},Flat", "M": m, "ef_construction": efc, "setting": "ef_search",
            "values": ARGS.ef, "build": {"ef_construction": efc, "ef_search": 64}}


def sweep(index: FaissIndex, setting: str, values: list[int], queries: np.ndarray,
          truth: np.ndarray) -> list[dict]:
    faiss.omp_set_num_threads(1)
    raw = index._index
    rows = []
    for value in values:
        index.set_search_setting(value)
        faiss.cvar.hnsw_stats.reset()
        ids, _ = index.search(queries, 10)  # ids == row numbers here
        row = {setting: value, "recall@10": round(recall_at_k(np.array(ids), truth), 4)}
        # How much of the data the search looked at: the cost no tuning of the search removes.
        if setting == "ef_search":
            distances = faiss.cvar.hnsw_stats.ndis / len(queries)
            row.update(distances_per_query=round(distances), visited_fraction=round(distances / raw.ntotal, 4))
        else:  # every code is scanned; this many float vectors are re-scored
            row.update(reranked_per_query=10 * value)
        api, bare = [], []
        for q in queries:
            t = time.perf_counter()
            index.search(q[None], 10)
            api.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw.search(q[None], 10)
            bare.append(time.perf_counter() - t)
        row.update({"p50_ms": percentile_ms(api, 50), "p99_ms": percentile_ms(api, 99),
                    "faiss_p50_ms": percentile_ms(bare, 50), "loadavg": load()})
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    faiss.omp_set_num_threads(ARGS.build_threads)
    return rows


def bench_config(spec: dict, vectors, queries, truth, work: Path) -> dict:
    name = index_label(spec).replace(" ", "-").replace(",", "-")
    out = work / f"{spec['dataset']}-{name}"
    ids = np.arange(len(vectors))
    shutil.rmtree(out, ignore_errors=True)
    load_before, rss_before, started = load(), rss_bytes(), now_iso()
    t0 = time.perf_counter()
    index = build_index(vectors, ids, out, {"benchmark": "index_scale"}, factory=spec["factory"], **spec["build"])
    build_s = time.perf_counter() - t0
    rss_delta = rss_bytes() - rss_before
    t0 = time.perf_counter()
    index.save()
    save_s = time.perf_counter() - t0
    result = {k: v for k, v in spec.items() if k not in ("values", "build")}
    result.update({"started_at": started, "build_seconds_incl_save": round(build_s, 1),
                   "save_seconds": round(save_s, 1), "rss_delta_bytes": rss_delta,
                   "index_file_bytes": (data_dir(out, index.meta) / INDEX_FILE).stat().st_size,
                   "vectors_bytes": int(vectors.nbytes), "loadavg_before_build": load_before,
                   "loadavg_after_build": load()})
    if "pq_M" in spec:  # the codes are M 4-bit nibbles a vector, and a search reads all of them
        result["codes_bytes"] = len(vectors) * spec["pq_M"] // 2
        result["read_codes_ms"] = read_ms(result["codes_bytes"])
    print(f"{spec['dataset']} {index_label(spec)}: build {build_s:.1f} s (save {save_s:.1f} s), "
          f"RSS +{rss_delta / 2**30:.2f} GiB, file {result['index_file_bytes'] / 2**30:.2f} GiB"
          + (f"; reading its codes once takes {result['read_codes_ms']} ms" if "read_codes_ms" in result else ""),
          flush=True)
    result["sweep"] = sweep(index, spec["setting"], spec["values"], queries, truth)
    del index
    release_memory()  # so the next build's RSS delta is its own
    shutil.rmtree(out, ignore_errors=True)
    return result


def index_label(c: dict) -> str:
    """'HNSW32,Flat efC 80' or 'PQ128x4fs,RFlat' (results from before 2026-12-02 carry no factory: HNSW)."""
    if "pq_M" in c:
        return c["factory"]
    factory = c.get("factory") or f"HNSW{c['M']},Flat"
    return f"{factory} efC {c['ef_construction']}"


def setting_label(r: dict) -> str:
    return f"efSearch {r['ef_search']}" if "ef_search" in r else f"k_factor {r['k_factor']}"


def sweep_rows(configs: list[dict], data: str) -> list[dict]:
    """Every sweep row of a dataset, each with the label of its index."""
    return [dict(index=index_label(c), **r) for c in configs if c["dataset"] == data for r in c["sweep"]]


def best_meeting_target(configs: list[dict], data: str) -> dict | None:
    ok = [r for r in sweep_rows(configs, data) if r["recall@10"] >= TARGET_RECALL and r["p50_ms"] <= TARGET_P50_MS]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def markdown(res: dict) -> str:
    lines = [f"# index scale benchmark ({res['date']} to {res.get('finished_at')})", "",
             f"{res['n']:,} {res['dim']}-d unit vectors in FAISS indexes (inner product) built and searched "
             f"through `dashclip.index`: HNSW (`HNSW<M>,Flat`), and a compressed scan re-ranked exactly "
             f"(`PQ<M>x4fs,RFlat`). {res['queries']} queries per dataset, recall@10 against exact search; "
             f"latency = one query at a time on 1 thread (p50 / p99 through `VectorIndex.search`, and p50 of "
             f"the bare FAISS call); builds on {res['build_threads']} thread(s).", "",
             f"Machine: {res['machine']['nproc']} cores, {res['machine']['cpu']}, faiss {res['machine']['faiss']}. "
             f"Load average at start {res['loadavg_start']}, at end {res.get('loadavg_end')} (1/5/15 min; "
             f"per-row values in the JSON).", "",
             "Exact search (IndexFlatIP), p50 per query on 1 thread (as last measured, with the dataset's latest "
             "run): " + ", ".join(f"{d} {ms} ms" for d, ms in res["exact_p50_ms"].items()) + ".", "",
             "| dataset | index | measured from | build s (incl. save) | RSS delta GiB | index file GiB "
             "| one read of the codes, ms |", "|---|---|---|---|---|---|---|"]
    for c in res["configs"]:
        # configs from before started_at was kept ran in the run that started at res["date"]
        lines.append(f"| {c['dataset']} | {index_label(c)} | {c.get('started_at', res['date'])[:16]} | "
                     f"{c['build_seconds_incl_save']} | "
                     f"{c['rss_delta_bytes'] / 2**30:.2f} | {c['index_file_bytes'] / 2**30:.2f} | "
                     f"{c.get('read_codes_ms', '-')} |")
    lines += ["", "| dataset | index | setting | recall@10 | p50 ms | p99 ms | bare FAISS p50 ms | distances/query "
              "| of all vectors |", "|---|---|---|---|---|---|---|---|---|"]
    for c in res["configs"]:
        for r in c["sweep"]:
            if "distances_per_query" in r:
                seen = f"{r['distances_per_query']:,} | {100 * r['visited_fraction']:.2f}%"
            elif "reranked_per_query" in r:  # all codes scanned, then this many exact distances
                seen = f"{res['n']:,} codes + {r['reranked_per_query']:,} exact | 100% (codes)"
            else:
                seen = "- | -"      # rows measured before it was counted
            lines.append(f"| {c['dataset']} | {index_label(c)} | {setting_label(r)} | {r['recall@10']} | "
                         f"{r['p50_ms']} | {r['p99_ms']} | {r['faiss_p50_ms']} | {seen} |")
    lines += ["", "Datasets: **random** = uniformly random unit vectors queried with new random unit vectors (the "
              "case the target is stated for, and the hardest there is: in 256-d all inner products are ~0 +- "
              "0.06, so the true top-10 barely stands out and HNSW must visit much of the graph); "
              "**clustered** = the same count around 20,000 random centres (cosine ~0.7 to the centre), queried "
              "with new draws from the mixture, closer to real embeddings. Latencies were taken on a shared "
              "2-core machine; compare the load averages (per row in the JSON) before reading them as "
              "figures for an idle machine.", ""]
    # What the time budget buys: exact search computes every distance in one sequential pass (the
    # cheapest way there is to compute one); a graph search pays more for each, in random order; a
    # compressed scan reads fewer bytes a vector but still all vectors.
    for data, ms in res["exact_p50_ms"].items():
        per_ms = res["n"] / ms
        lines.append(f"- {data}: exact search computes {per_ms:,.0f} distances per ms, so {TARGET_P50_MS:g} ms pays "
                     f"for at most ~{TARGET_P50_MS * per_ms:,.0f} distances ({100 * TARGET_P50_MS / ms:.1f}% of the "
                     f"vectors) at that rate.")
    for c in res["configs"]:
        if "read_codes_ms" in c and c["dataset"] in res["exact_p50_ms"]:
            gbs = c["codes_bytes"] / c["read_codes_ms"] / 1e6
            lines.append(f"- {c['dataset']}, {index_label(c)}: {c['codes_bytes'] / 1e6:.0f} MB of codes; one "
                         f"sequential read of them takes {c['read_codes_ms']} ms on 1 thread ({gbs:.1f} GB/s), "
                         f"the floor of a search that scans them.")
    lines.append("")
    for data in res["target"]:
        rows = sweep_rows(res["configs"], data)
        fast = [r for r in rows if r["p50_ms"] <= TARGET_P50_MS]
        accurate = [r for r in rows if r["recall@10"] >= TARGET_RECALL]
        for kind, pick in (("HNSW", lambda r: r["index"].startswith("HNSW")),
                           ("compressed scan", lambda r: not r["index"].startswith("HNSW"))):
            f = [r for r in fast if pick(r)]
            a = [r for r in accurate if pick(r)]
            if f:
                r = max(f, key=lambda r: r["recall@10"])
                lines.append(f"- {data}, {kind}: best recall@10 within {TARGET_P50_MS:g} ms: {r['recall@10']} "
                             f"({r['index']}, {setting_label(r)}, p50 {r['p50_ms']} ms)")
            if a:
                r = min(a, key=lambda r: r["p50_ms"])
                lines.append(f"- {data}, {kind}: fastest recall@10 >= {TARGET_RECALL}: p50 {r['p50_ms']} ms "
                             f"({r['index']}, {setting_label(r)}, recall {r['recall@10']}"
                             + (f", {100 * r['visited_fraction']:.1f}% of the vectors visited"
                                if "visited_fraction" in r else "")
                             + f"; exact search {res['exact_p50_ms'][data]} ms)")
    lines.append("")
    for data, best in res["target"].items():
        lines.append(f"- Target recall@10 >= {TARGET_RECALL} with p50 <= {TARGET_P50_MS} ms, **{data}** data: "
                     + (f"met by {best['index']}, {setting_label(best)} (recall {best['recall@10']}, p50 "
                        f"{best['p50_ms']} ms)" if best else "**missed**"))
    return "\n".join(lines) + "\n"


def main() -> None:
    faiss.omp_set_num_threads(ARGS.build_threads)
    if ARGS.vectors:     # the embeddings dataset's size is the file's
        shape = np.load(ARGS.vectors, mmap_mode="r").shape
        ARGS.n, ARGS.dim = int(shape[0]), int(shape[1])
        ARGS.queries = int(np.load(ARGS.query_vectors, mmap_mode="r").shape[0])
    work = Path(ARGS.work)
    work.mkdir(parents=True, exist_ok=True)
    configs: list[dict] = []
    res = {"benchmark": "index_scale", "date": now_iso(), "n": ARGS.n, "dim": ARGS.dim,
           "queries": ARGS.queries, "build_threads": ARGS.build_threads,
           "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "faiss": faiss.__version__,
                       "python": platform.python_version()},
           "loadavg_start": load(), "exact_p50_ms": {}, "configs": configs}
    name = ARGS.out or "index_scale"
    if ARGS.append and (RESULTS / f"{name}.json").exists():
        previous = read_json(RESULTS / f"{name}.json")
        if [previous["n"], previous["dim"], previous["queries"]] != [ARGS.n, ARGS.dim, ARGS.queries]:
            raise SystemExit(f"--append: {name}.json has other --n/--dim/--queries")
        configs.extend(previous["configs"])
        res.update(date=previous["date"], loadavg_start=previous["loadavg_start"],
                   exact_p50_ms=previous["exact_p50_ms"], build_threads=previous["build_threads"])
        if previous["build_threads"] != ARGS.build_threads:
            raise SystemExit("--append: use the same --build-threads as the runs being added to")
    loaded = None
    for spec in map(index_spec, ARGS.runs):
        data = spec["dataset"]
        if loaded != data:
            vectors = queries = truth = None
            release_memory()
            t0 = time.perf_counter()
            vectors, queries = dataset(data)
            truth, res["exact_p50_ms"][data] = ground_truth(vectors, queries)
            loaded = data
            print(f"{data}: data + exact ground truth in {time.perf_counter() - t0:.1f} s; exact search p50 "
                  f"{res['exact_p50_ms'][data]:.1f} ms", flush=True)
        configs.append(bench_config(spec, vectors, queries, truth, work))
        res.update(loadavg_end=load(), finished_at=now_iso(),
                   target={d: best_meeting_target(configs, d) for d in dict.fromkeys(c["dataset"] for c in configs)})
        write_json(RESULTS / f"{name}.json", res)  # after every run: a later kill keeps what was measured
        write_text(RESULTS / f"{name}.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    sys.exit(main())
