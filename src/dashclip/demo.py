"""`dashclip demo`: the whole method on the fashion catalog, one command, on the embedded default.

    import -> Stage 1 -> embed -> labels -> Stage 2 -> index -> eval -> serve

Every step writes into the work dir (default `runs/demo/`, `runs/demo-quick/` with --quick) and
records itself in `demo.json` when it is done, so a second run reuses what is done (and a killed
step resumes: Stage 1, embedding and grading keep their checkpoints/shards). `--fresh` starts over.
What a user keeps:
    model/    the Stage 2 model (product encoder + query encoder): dashclip.load("runs/demo/model")
    index/    the FAISS index of the product embeddings: dashclip search --model ... --index ...
    report/   the evaluation report (report.md, report.html, plots/) on held-out shopper queries

Each step calls the same Python API as the stage's own CLI command and benchmark; the demo only
chooses sizes that fit a laptop CPU (`SIZES`). The shopper queries held out from every training
step (qid divisible by 3) are excluded from the labels and from Stage 2 here too.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import typer

FASHION = "fashion-product-images-small"
VOCABULARY = "fashion"     # the shop vocabulary of the fashion preset (labeling/vocabularies/fashion.json)


@dataclass(frozen=True)
class Sizes:
    products: int | None          # None: the whole catalog; else a seeded sample of the catalog
    image_size: int               # the fashion photos are 60x80: 96 px loses nothing and is ~4x cheaper than 224
    stage1_epochs: int
    stage1_max_steps: int | None
    seed_k_bm25: int              # seed grades: BM25 top K + MiniLM top K + random candidates of each query
    seed_k_dense: int
    seed_n_random: int
    labeler_epochs: int
    labeler_max_pairs: int | None
    labeler_max_length: int       # tokens of query + product text + shopper words
    labeler_reading_queries: int  # synthesized queries graded by their readings, also taught to the labeler
    pool_queries: int             # synthesized queries to grade with the labeler
    pool_k_bm25: int
    pool_k_reading: int           # products that fit the query's reading / nearly fit it (candidates.py)
    pool_k_near: int
    pool_n_random: int
    align_epochs: int
    align_max_steps: int | None
    align_lr: float


SIZES = {
    "full": Sizes(products=None, image_size=96, stage1_epochs=1, stage1_max_steps=60, seed_k_bm25=10,
                  seed_k_dense=10, seed_n_random=5, labeler_epochs=2, labeler_max_pairs=None,
                  labeler_max_length=80, labeler_reading_queries=0, pool_queries=2200, pool_k_bm25=2,
                  pool_k_reading=6, pool_k_near=2, pool_n_random=1, align_epochs=3, align_max_steps=210,
                  align_lr=1.5e-4),
    "quick": Sizes(products=1500, image_size=64, stage1_epochs=1, stage1_max_steps=12, seed_k_bm25=6,
                   seed_k_dense=4, seed_n_random=2, labeler_epochs=1, labeler_max_pairs=240,
                   labeler_max_length=64, labeler_reading_queries=40, pool_queries=250, pool_k_bm25=2,
                   pool_k_reading=4, pool_k_near=1, pool_n_random=1, align_epochs=1, align_max_steps=8,
                   align_lr=1.5e-4),
}


class Demo:
    """The work dir and its record of finished steps."""

    def __init__(self, work: Path, sizes: Sizes, mode: str, log):
        self.work, self.sizes, self.mode, self.log = work, sizes, mode, log
        self.record_path = work / "demo.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        if self.record.get("mode", mode) != mode:
            raise ValueError(f"{work} holds a {self.record['mode']} demo; use --fresh or another --work")
        self.record.update(mode=mode, sizes=dataclasses.asdict(sizes))
        self.record.setdefault("steps", {})

    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    def done(self, step: str) -> bool:
        return step in self.record["steps"]

    def finish(self, step: str, seconds: float, **facts) -> None:
        from .io import write_json

        self.record["steps"][step] = {"seconds": round(seconds, 1), **facts}
        write_json(self.record_path, self.record)


# ---------------------------------------------------------------------------------------------
# The steps. Each returns facts worth recording.


def step_import(d: Demo) -> dict:
    """The fashion catalog (or, with --quick, a seeded sample of it) into `catalog/`."""
    import pandas as pd

    from .data.importer import import_catalog
    from .data.presets import get_preset
    if d.sizes.products is None:
        result = import_catalog(None, d.path("catalog"), preset=FASHION)
    else:
        source = get_preset(FASHION).load()
        rows = pd.read_csv(source.file, dtype=str, keep_default_na=False, on_bad_lines="skip")
        sample = rows.sample(n=min(d.sizes.products, len(rows)), random_state=0).sort_index()
        csv = d.path("source", "catalog-sample.csv")
        csv.parent.mkdir(parents=True, exist_ok=True)
        sample.to_csv(csv, index=False)
        result = import_catalog(csv, d.path("catalog"), mapping=source.mapping, name=f"{FASHION}-sample")
    r = result.report
    return {"products": r.products, "with_image": r.products_with_image}


def step_stage1(d: Demo) -> dict:
    """Stage 1: ITC + ITM on catalog image-title pairs, image tower frozen and its features cached."""
    from .training.pretrain import PretrainConfig, pretrain

    out = d.path("stage1")
    cfg = PretrainConfig(config="default", image_size=d.sizes.image_size, freeze_image=True,
                         epochs=d.sizes.stage1_epochs, max_steps=d.sizes.stage1_max_steps, batch_size=64,
                         lr=1e-4, warmup_steps=20, ckpt_every=50, cache_dir=str(d.path("cache")), amp="auto",
                         resume=(out / "checkpoints" / "last.pt").exists())
    t0 = time.time()
    result = pretrain(d.path("catalog"), out, cfg)
    last = result.train.evals[-1] if result.train.evals else {}
    cache = result.split.get("image_cache", {})
    # A cache built by an earlier run of this work dir is not in this step's seconds: say so.
    built_here = bool(cache.get("path")) and (Path(cache["path"]) / "meta.json").stat().st_mtime >= t0
    return {"steps": result.train.step, "pairs": result.train.examples,
            "image_cache_build_seconds": cache.get("build_seconds"), "image_cache_built_in_this_step": built_here,
            **{k: round(v, 4) for k, v in last.items() if isinstance(v, float)}}


def heldout_queries() -> list[dict]:
    """The fashion dev queries held out from all training (qid divisible by 3)."""
    from .evaluation.qrels import load_queries
    from .settings import dataset_dir

    return load_queries(dataset_dir("fashion-queries") / "dev_queries.jsonl", heldout_only=True)


def step_embed(d: Demo) -> dict:
    """Product embeddings (fused, image, text) of the whole catalog with the Stage 1 model
    (image features from Stage 1's cache: the image tower was frozen)."""
    import dashclip

    from .models.embeddings import embed_catalog, load_embeddings

    model = dashclip.load(d.path("stage1", "model"))
    embed_catalog(model, d.path("catalog"), d.path("embeddings"), batch_size=128, image_cache_root=d.path("cache"))
    return {"products": len(load_embeddings(d.path("embeddings")))}


def step_labels(d: Demo) -> dict:
    """Seed grades -> cross-encoder labeler -> synthesized queries -> their candidates, graded and
    checked against what each query was built to mean."""
    import numpy as np
    import pandas as pd

    from .data.catalog import Catalog
    from .evaluation.baselines import minilm_scorer
    from .io import save_with, write_json
    from .labeling import load_grades
    from .labeling.candidates import DenseRetriever, pick_candidates
    from .labeling.consistency import keep_consistent, reading_examples
    from .labeling.evaluate import evaluate_labeler
    from .labeling.grades import split_by_query
    from .labeling.grading import grade_pairs
    from .labeling.labelers.cross_encoder import CrossEncoderConfig, CrossEncoderLabeler, train_from_seed
    from .labeling.queries import synthesize_queries
    from .labeling.seed import seed_from_labels_py
    from .labeling.vocabulary import Vocabulary
    from .settings import dataset_dir
    from .text import BM25

    s, out = d.sizes, d.path("labels")
    catalog = Catalog.open(d.path("catalog"))
    vocabulary = Vocabulary.load(VOCABULARY)
    bm25 = BM25(catalog.product_texts())
    heldout = [q["query"] for q in heldout_queries()]
    seconds, t0 = {}, time.time()

    def lap(name):      # where the step's time goes, for the record in demo.json
        nonlocal t0
        seconds[name], t0 = round(time.time() - t0, 1), time.time()

    seed_path = out / "seed.parquet"     # the "human" grades: fashion-queries' label rule on each query's candidates
    if not seed_path.exists():
        # An annotator judges each query's top results of BM25 and of off-the-shelf MiniLM (query vs title;
        # the evaluation's baseline reads the same cached title vectors), and a few random products.
        minilm = minilm_scorer(catalog, cache_dir=d.path("cache", "eval"))
        dense = DenseRetriever(minilm.encode_queries, np.asarray(minilm.product_ids), minilm.product_vectors,
                               name="minilm")
        seed = seed_from_labels_py(catalog, dataset_dir("fashion-queries") / "dev_queries.jsonl", bm25=bm25,
                                   k_bm25=s.seed_k_bm25, dense=dense, k_dense=s.seed_k_dense,
                                   n_random=s.seed_n_random, seed=0)
        save_with(seed_path, lambda p: seed.to_parquet(p, index=False))
    seed = pd.read_parquet(seed_path)
    lap("seed")

    # The pool Stage 2 trains on: synthesized queries and their candidates (made first, so the labeler's
    # reading-graded lessons below never repeat a pool query).
    pool_path, pairs_path = out / "pool.parquet", out / "pool_pairs.parquet"
    if not pairs_path.exists():
        pool = synthesize_queries(catalog, n=s.pool_queries, seed=0, vocabulary=vocabulary,
                                  exclude=heldout)
        pairs = pick_candidates(catalog, pool, bm25=bm25, k_bm25=s.pool_k_bm25, n_random=s.pool_n_random,
                                k_dense=0, k_reading=s.pool_k_reading, k_near=s.pool_k_near, seed=1)
        save_with(pool_path, lambda p: pool.to_parquet(p, index=False))
        save_with(pairs_path, lambda p: pairs.to_parquet(p, index=False))
    pool, pairs = pd.read_parquet(pool_path), pd.read_parquet(pairs_path)
    lap("pool_and_candidates")

    labeler_dir = out / "labeler"
    if not (labeler_dir / "labeler.json").exists():
        train, held = split_by_query(seed)
        if s.labeler_max_pairs and len(train) > s.labeler_max_pairs:
            train = train.sample(n=s.labeler_max_pairs, random_state=0)
        lessons = reading_examples(catalog, vocabulary, s.labeler_reading_queries, seed=7, bm25=bm25,
                                   exclude=heldout + pool["query"].tolist() + seed["query"].tolist())
        d.log(f"training the cross-encoder labeler on {len(train)} seed grades and {len(lessons)} reading-graded "
              f"pairs (vocabulary {vocabulary.name})")
        train_from_seed(pd.concat([train, held]), catalog, labeler_dir, vocabulary=vocabulary, extra=lessons,
                        config=CrossEncoderConfig(epochs=s.labeler_epochs, max_length=s.labeler_max_length, amp="auto"))
    lap("labeler_train")
    labeler = CrossEncoderLabeler(labeler_dir, batch_size=128)
    quality = evaluate_labeler(labeler, seed, catalog, batch_size=128)
    write_json(out / "labeler_eval.json", quality)
    lap("labeler_eval")

    d.log(f"grading {len(pairs)} (query, product) pairs of {pairs['qid'].nunique()} synthesized queries")
    summary = grade_pairs(pairs, catalog, labeler, out / "grades", shard_size=2048)
    lap("grade")
    kept, check = keep_consistent(load_grades(out / "grades"), pool, catalog)
    save_with(out / "checked.parquet", lambda p: kept.to_parquet(p, index=False))
    write_json(out / "checked.json", check)
    lap("check")
    return {"seed_grades": len(seed), "pool_queries": int(len(pool)), "graded_pairs": int(summary["pairs"]),
            "checked_pairs_kept": check["kept"], "agreement_with_readings": check["agreement"],
            "labeler_heldout_kappa": round(quality.get("kappa_quadratic", float("nan")), 4),
            "labeler_heldout_accuracy": round(quality.get("accuracy", float("nan")), 4),
            "seconds_by_part": seconds}


def step_stage2(d: Demo) -> dict:
    """Stage 2: the query encoder, trained with QCC on seed + model grades; product side frozen."""
    from .io import atomic_dir
    from .training.align import AlignConfig, align
    from .training.loop import LoopConfig

    out = d.path("stage2")
    loop = LoopConfig(epochs=d.sizes.align_epochs, max_steps=d.sizes.align_max_steps, batch_size=64,
                      lr=d.sizes.align_lr, warmup_steps=20, ckpt_every=100, amp="auto",
                      resume=(out / "checkpoints" / "last.pt").exists())
    summary = align(d.path("stage1", "model"), [d.path("labels", "seed.parquet"), d.path("labels", "checked.parquet")],
                    out, AlignConfig(batch_size=64), loop, embeddings_dir=d.path("embeddings"),
                    exclude_queries={q["query"] for q in heldout_queries()})
    with atomic_dir(d.path("model")) as tmp:      # the model users keep: both encoders
        shutil.copytree(out / "model", tmp, dirs_exist_ok=True)
    return {"steps": summary["steps"], "train_examples": summary["train_examples"],
            "last_loss": round(summary["last"].get("loss", float("nan")), 4)}


def step_index(d: Demo) -> dict:
    """A FAISS index of the product embeddings, with the catalog attributes for filters."""
    import dashclip

    from .data.catalog import Catalog
    from .index.catalog_index import build_catalog_index

    model = dashclip.load(d.path("model"))
    index = build_catalog_index(model, d.path("model"), Catalog.open(d.path("catalog")), d.path("index"),
                                embeddings=d.path("embeddings"), quiet=True)
    return {"products": len(index), "factory": index.meta.get("factory")}


def step_eval(d: Demo) -> dict:
    """The report on the held-out shopper queries: BM25, MiniLM, before and after Stage 2."""
    from .evaluation.report import run_eval
    from .settings import dataset_dir

    paths = run_eval(d.path("model"), d.path("catalog"), d.path("report"),
                     queries_path=dataset_dir("fashion-queries") / "dev_queries.jsonl",
                     embeddings_dir=d.path("embeddings"), heldout_only=True,
                     cache_dir=d.path("cache", "eval"), log=d.log)
    return {"report": str(paths["markdown"]), "headline": paths["headline"]}


STEPS = [("import", step_import), ("stage1", step_stage1), ("embed", step_embed), ("labels", step_labels),
         ("stage2", step_stage2), ("index", step_index), ("eval", step_eval)]


def run_demo(work: Path | None = None, quick: bool = False, fresh: bool = False, log=print) -> Demo:
    from .settings import runs_dir

    mode = "quick" if quick else "full"
    work = Path(work) if work else runs_dir() / ("demo-quick" if quick else "demo")
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    d = Demo(work, SIZES[mode], mode, log)
    t_all = time.time()
    for i, (name, fn) in enumerate(STEPS, 1):
        if d.done(name):
            log(f"[{i}/{len(STEPS)}] {name}: done before ({d.record['steps'][name]['seconds']:.0f}s), reused")
            continue
        log(f"[{i}/{len(STEPS)}] {name}: {fn.__doc__.splitlines()[0]}")
        t0 = time.time()
        facts = fn(d)
        d.finish(name, time.time() - t0, **facts)
        log(f"[{i}/{len(STEPS)}] {name}: finished in {time.time() - t0:.0f}s")
    d.record["total_seconds_this_run"] = round(time.time() - t_all, 1)
    d.record["total_seconds_all_steps"] = round(sum(s["seconds"] for s in d.record["steps"].values()), 1)
    d.record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from .io import write_json
    write_json(d.record_path, d.record)
    return d


def print_headline(d: Demo, console) -> None:
    from rich.table import Table

    rows = d.record["steps"].get("eval", {}).get("headline", {})
    if rows:
        table = Table(title="Held-out shopper queries (fashion-queries, qid % 3 == 0)")
        for col in ("system", "NDCG@10", "Recall@100", "MRR"):
            table.add_column(col)
        for name, m in rows.items():
            table.add_row(name, *(f"{m[k]:.3f}" if k in m else "-" for k in ("ndcg@10", "recall@100", "mrr")))
        console.print(table)
    timings = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in d.record["steps"].items())
    console.print(f"steps: {timings}; total {d.record['total_seconds_all_steps'] / 60:.1f} min "
                  f"(this run {d.record['total_seconds_this_run'] / 60:.1f} min)")
    console.print(f"model:  {d.path('model')}\nindex:  {d.path('index')}\nreport: {d.path('report', 'report.md')}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        work: Path = typer.Option(None, "--work", help="Work dir (default runs/demo, runs/demo-quick with --quick)."),
        quick: bool = typer.Option(False, "--quick", help="A 1,500-product sample and short training (~5 min)."),
        fresh: bool = typer.Option(False, "--fresh", help="Delete the work dir and start over."),
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the web page at the end."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
    ):
        """Run the whole method on the fashion catalog: import, Stage 1, labels, Stage 2, index, eval,
        then serve the web page. A second run reuses finished steps."""
        from .clihelp import console, user_errors

        with user_errors():
            d = run_demo(work, quick=quick, fresh=fresh, log=lambda m: console.print(f"[bold cyan]demo[/] {m}"))
        print_headline(d, console)
        if serve:
            from .serving.server import serve_app
            serve_app(d.path("model"), d.path("index"), d.path("catalog"), host=host, port=port)
