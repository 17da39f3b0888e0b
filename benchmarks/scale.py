"""End to end at scale (issue 22): the fashion catalog and catalogs grown from it (`dashclip catalog synth`),
each step run as its own `dashclip` command so its wall time and peak memory (the process's max RSS, from
wait4) are its own.

For each N: the catalog (import at the source size, `catalog synth` above it), the image-feature cache of its
images (the image tower once per unique image, as `pretrain --freeze-image` leaves it), `embed-catalog` in
one process and with `--ray local --ray-workers 2` (products/s, and the largest difference between the two
runs' vectors), `index build` (exact and HNSW32), then search: `Searcher.search` one query at a time (p50,
p99), and at the largest N the HNSW sweep of `benchmarks/index_scale.py` on these product embeddings and
encoded queries (recall@10 against exact, p50 on one thread). With --grade-run (a `dashclip train` output dir
with a cross-encoder labeler, e.g. runs/homedepot) it also times `labels grade` on --grade-pairs of its
candidate pairs, in one process and with Ray.

The model is the default config (MiniLM text tower, EfficientNet-Lite0 image tower at 96 px, the size the demo
trains at) with its pretrained towers and fresh projections, seeded: product embeddings of real titles and
images, not a trained model's. Ray actors are processes of the Ray cluster, not of the command, so the Ray
rows' peak memory is the driver's only.

    python benchmarks/scale.py [--sizes 44439 200000] [--work runs/scale] [--grade-run runs/homedepot]

Writes benchmarks/results/scale.{json,md} after every step (a killed run keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
PY = sys.executable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def run_step(name: str, args: list[str], record: dict, **extra) -> dict:
    """Run one command; its seconds and its own peak RSS (wait4: this child's rusage only)."""
    log(f"{name}: {' '.join(str(a) for a in args)}")
    t0 = time.time()
    proc = subprocess.Popen([str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out[-3000:]}")
    step = {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "loadavg_end": round(os.getloadavg()[0], 2), **extra}
    record[name] = step
    log(f"{name}: {step['seconds']} s, peak RSS {step['peak_rss_gib']} GiB")
    return step


def cli(*args) -> list[str]:
    return [PY, "-m", "dashclip.cli", *args]


def python(code: str, *args) -> list[str]:
    return [PY, "-c", code, *args]


BUILD_CACHE = ("import sys, dashclip; from dashclip.data.catalog import Catalog; "
               "from dashclip.models.feature_cache import build_or_open; "
               "m = dashclip.load(sys.argv[1]); c = Catalog.open(sys.argv[2]); "
               "cache = build_or_open(m, c.image_index().paths, sys.argv[3], show_progress=False); "
               "print(len(c.image_index().paths), 'images')")

SEARCH = """
import json, sys, time
import numpy as np
from dashclip.serving.search import Searcher
model, index, queries_file, out = sys.argv[1:5]
texts = [json.loads(l)["query"] for l in open(queries_file)]
s = Searcher.open(model, index)
s.search(texts[0], k=10)
ms = []
for q in texts:
    t = time.perf_counter(); s.search(q, k=10); ms.append((time.perf_counter() - t) * 1000)
np.save(out, s.encode(texts))
print(json.dumps({"queries": len(texts), "p50_ms": round(float(np.percentile(ms, 50)), 2),
                  "p99_ms": round(float(np.percentile(ms, 99)), 2)}))
"""


def query_texts(work: Path, catalog: Path, n: int = 1000) -> Path:
    """Shopper queries: the fashion dev queries, then product titles of the source catalog to make up n."""
    import pandas as pd

    from dashclip.io import write_jsonl
    from dashclip.settings import dataset_dir

    texts = [json.loads(line)["query"] for line in (dataset_dir("fashion-queries") / "dev_queries.jsonl")
             .read_text().splitlines() if line.strip()]
    titles = pd.read_parquet(catalog / "catalog.parquet")["title"].astype(str)
    texts += titles.sample(n=max(n - len(texts), 0), random_state=0).tolist()
    path = work / "queries.jsonl"
    write_jsonl(path, [{"qid": f"q{i}", "query": t} for i, t in enumerate(texts[:n])])
    return path


def max_diff(a: Path, b: Path) -> float:
    return float(max(np.abs(np.load(a / f"{k}.npy") - np.load(b / f"{k}.npy")).max() for k in ("fused", "text")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[44439, 200000],
                    help="catalog sizes to run end to end (none: only the grading comparison)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "scale")
    ap.add_argument("--grade-run", type=Path, default=None)
    ap.add_argument("--grade-pairs", type=int, default=8192)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--ray-address", default="local", help="--ray of the Ray runs: local (a Ray started by the "
                    "command itself, its start-up timed) or auto / HOST:PORT (a running `ray start --head`)")
    ap.add_argument("--ef", nargs="+", default=["16", "32", "64", "128", "256", "512", "1024"],
                    help="HNSW efSearch values of the sweep at the largest N")
    ap.add_argument("--no-ray-at-largest", action="store_true", help="skip the Ray embedding at the largest N")
    ap.add_argument("--name", default="scale")
    args = ap.parse_args(argv)

    import torch

    import dashclip
    from _machine import commit, cpu_model
    from dashclip.io import write_json, write_text

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = RESULTS / f"{args.name}.json"
    record = {"benchmark": "scale", "script": "benchmarks/scale.py", "commit": commit(), "ray": args.ray_address,
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "loadavg_start": round(os.getloadavg()[0], 2),
                          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
              "model": "default config, pretrained towers, fresh projections (seed 0), image_size 96",
              "sizes": {}, "grading": {}}

    def save():
        record["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
        write_json(results, record)
        write_text(results.with_suffix(".md"), markdown(record))

    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        dashclip.create_model("default", image_size=96).save(model_dir)
    source = work / "catalog-source"
    cache = work / "image-features"
    queries = None
    for n in args.sizes:
        steps: dict = {}
        record["sizes"][str(n)] = steps
        cat = work / f"catalog-{n}"
        if n == args.sizes[0]:
            if not (source / "catalog.parquet").exists():
                run_step("catalog import", cli("catalog", "import", "fashion-product-images-small", "--out",
                                                    source), steps)
            queries = query_texts(work, source)
        if not (cat / "catalog.parquet").exists():
            run_step("catalog synth", cli("catalog", "synth", "--from", source, "--n", n, "--out", cat), steps)
        run_step("image-feature cache", python(BUILD_CACHE, model_dir, cat, cache), steps)
        emb = work / f"emb-{n}"
        shutil.rmtree(emb, ignore_errors=True)      # timed from scratch: no finished chunks to skip
        s = run_step("embed-catalog (1 process)", cli("embed-catalog", "--model", model_dir, "--catalog", cat,
                                                           "--out", emb, "--image-cache", cache, "--no-progress"),
                     steps)
        s["products_per_second"] = round(n / s["seconds"], 1)
        save()
        if not (args.no_ray_at_largest and n == args.sizes[-1]):
            emb_ray = work / f"emb-{n}-ray"
            shutil.rmtree(emb_ray, ignore_errors=True)
            r = run_step(f"embed-catalog --ray ({args.ray_workers} workers)",
                         cli("embed-catalog", "--model", model_dir, "--catalog", cat, "--out", emb_ray,
                                  "--image-cache", cache, "--no-progress", "--ray", args.ray_address, "--ray-workers",
                                  args.ray_workers), steps)
            r["products_per_second"] = round(n / r["seconds"], 1)
            r["vs_one_process"] = round(r["products_per_second"] / s["products_per_second"], 3)
            r["max_abs_diff_vs_one_process"] = max_diff(emb, emb_ray)
            save()
        for factory in ("Flat", "HNSW32"):
            run_step(f"index build ({factory})", cli("index", "build", "--model", model_dir, "--catalog", cat,
                                                          "--embeddings", emb, "--out", work / f"index-{n}-{factory}",
                                                          "--factory", factory, "--quiet"), steps)
            proc = subprocess.run([PY, "-c", SEARCH, model_dir, work / f"index-{n}-{factory}", queries,
                                   work / "query_vectors.npy"], cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            steps[f"search ({factory}), Searcher.search k=10, one query at a time"] = json.loads(
                proc.stdout.strip().splitlines()[-1])
            log(f"search {factory}: {steps[f'search ({factory}), Searcher.search k=10, one query at a time']}")
            save()
    if args.sizes:  # HNSW on these product embeddings at the largest N: recall@10 vs exact, p50 on one thread
        n = args.sizes[-1]
        sweep = f"{args.name}_hnsw_{n}"
        run_step("index_scale.py sweep", [PY, REPO / "benchmarks" / "index_scale.py", "--runs", "embeddings:32:80",
                                          "--vectors", work / f"emb-{n}" / "fused.npy", "--query-vectors",
                                          work / "query_vectors.npy", "--ef", *args.ef,
                                          "--out", sweep, "--work", work / "index-scale"], record["sizes"][str(n)])
        record["hnsw"] = {"results": f"benchmarks/results/{sweep}.md", **json.loads((RESULTS / f"{sweep}.json")
                                                                                   .read_text())["target"]}
        save()
    if args.grade_run is not None:
        grading(args, record, save)
    save()
    log(f"wrote {results} and {results.with_suffix('.md')}")
    return 0


def grading(args, record: dict, save) -> None:
    """`labels grade` on the same pairs, one process against Ray (the labeler of a `dashclip train` run)."""
    import pandas as pd

    run, work = args.grade_run, args.work
    pairs = pd.read_parquet(run / "labels" / "pool_pairs.parquet") if (run / "labels" / "pool_pairs.parquet").exists() \
        else None
    if pairs is None or not {"qid", "query", "product_id"} <= set(pairs.columns):
        raise SystemExit(f"{run}/labels/pool_pairs.parquet: no (qid, query, product_id) pairs to grade")
    sample = pairs[["qid", "query", "product_id"]].drop_duplicates(["query", "product_id"]).head(args.grade_pairs)
    path = work / "grade_pairs.parquet"
    sample.to_parquet(path, index=False)
    steps = record["grading"]
    steps["pairs"], steps["labeler"] = len(sample), str(run / "labels" / "labeler")
    base = ["labels", "grade", "--catalog", run / "catalog", "--pairs", path, "--labeler", "cross-encoder",
            "--labeler-path", run / "labels" / "labeler"]
    for name, extra in (("one process", []), (f"Ray, {args.ray_workers} workers",
                                                  ["--ray", args.ray_address, "--ray-workers", str(args.ray_workers)])):
        out = work / f"grades-{'ray' if extra else 'one'}"
        shutil.rmtree(out, ignore_errors=True)
        s = run_step(f"labels grade ({name})", cli(*base, "--out", out, *extra), steps)
        s["pairs_per_second"] = round(len(sample) / s["seconds"], 1)
        save()
    one, ray = (pd.concat([pd.read_parquet(f) for f in sorted((work / f"grades-{k}").glob("grades-*.parquet"))])
                for k in ("one", "ray"))
    steps["identical_grades"] = bool((one["grade"].to_numpy() == ray["grade"].to_numpy()).all())
    steps["ray_vs_one_process"] = round(steps[f"labels grade (Ray, {args.ray_workers} workers)"]["pairs_per_second"]
                                        / steps["labels grade (one process)"]["pairs_per_second"], 3)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Scale: the fashion catalog and catalogs grown from it, end to end", "",
             f"Script `{r['script']}`, commit {r['commit']}, run {r['started_utc']} - {r.get('finished_utc')} (UTC) "
             f"on {m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB (load average at the start "
             f"{m['loadavg_start']}, at the end {m.get('loadavg_end')}). Model: {r['model']}.", "",
             "Each step is one command; peak RSS is that process's own (Ray actors are separate processes: the "
             "Ray rows show the driver's). Ray runs: `--ray " + r.get("ray", "local") + "` (local: the command "
             "starts Ray itself and that start-up is in its time; auto: a running `ray start --head` cluster).", ""]
    for n, steps in r["sizes"].items():
        lines += [f"## {int(n):,} products", "", "| step | seconds | peak RSS GiB | throughput | notes |",
                  "|---|---:|---:|---:|---|"]
        for name, s in steps.items():
            if "seconds" in s:
                rate = (f"{s['products_per_second']} products/s" if "products_per_second" in s else "")
                note = "; ".join(f"{k} {v}" for k, v in s.items() if k in ("vs_one_process", "max_abs_diff_vs_one_process"))
                lines.append(f"| {name} | {s['seconds']} | {s['peak_rss_gib']} | {rate} | {note} |")
        for name, s in steps.items():
            if "p50_ms" in s:
                lines.append(f"| {name} | | | p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms | {s['queries']} queries |")
        lines.append("")
    if r.get("hnsw"):
        lines += ["## HNSW on these product embeddings", "", f"See `{r['hnsw']['results']}`. Best setting meeting "
                  f"recall@10 >= 0.95 at p50 <= 2 ms: " + json.dumps({k: v for k, v in r["hnsw"].items()
                                                                    if k != "results"}), ""]
    g = r.get("grading") or {}
    if g.get("pairs"):
        lines += ["## labels grade", "", f"{g['pairs']} pairs, labeler `{g['labeler']}`; identical grades: "
                  f"{g.get('identical_grades')}; Ray / one process: {g.get('ray_vs_one_process')}", "",
                  "| run | seconds | pairs/s | peak RSS GiB |", "|---|---:|---:|---:|"]
        for name, s in g.items():
            if isinstance(s, dict) and "seconds" in s:
                lines.append(f"| {name} | {s['seconds']} | {s.get('pairs_per_second')} | {s['peak_rss_gib']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
