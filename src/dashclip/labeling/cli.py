"""CLI for relevance labels at scale (`dashclip labels ...`). The steps, in order:

    synthesize-queries -> candidates -> seed-from-qrels -> train -> grade -> check -> evaluate   (+ export-finetune)

Heavy imports (torch, transformers) happen inside the commands so `dashclip --help` stays fast."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

labels_app = typer.Typer(help="Relevance labels at scale: query pool, candidates, seed grades, labelers, grading.",
                         no_args_is_help=True)

CATALOG = typer.Option(..., "--catalog", help="Catalog dir (`dashclip catalog import` output).")


def _read_parquet(path: Path, what: str):
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what} file")
    return pd.read_parquet(path)


def _read_seed(path: Path):
    from .grades import load_grades

    return load_grades(path)


def _labeler_spec(name: str, path: Optional[Path], catalog, seed_path: Optional[Path], cache_dir: Optional[Path],
                  concurrency: int, batch_size: int):
    from .labelers import LabelerSpec

    if name == "llm":
        from .labelers.llm import few_shot_examples

        examples = few_shot_examples(_read_seed(seed_path), catalog) if seed_path else []
        return LabelerSpec("llm", {"seed_examples": examples, "cache_dir": cache_dir, "concurrency": concurrency})
    if path is None:
        raise ValueError(f"--labeler-path is required for the {name} labeler (the dir `dashclip labels train` wrote)")
    if name == "cross-encoder":
        return LabelerSpec(name, {"path": path, "batch_size": batch_size})
    return LabelerSpec(name, {"path": path})


def _make_labeler(*args):
    return _labeler_spec(*args).build()


@labels_app.command("synthesize-queries")
def synthesize_queries(
    catalog: Path = CATALOG,
    out: Path = typer.Option(..., "--out", help="Query pool JSONL ({qid, query, template, product_id} lines)."),
    n: int = typer.Option(2000, "--n", help="How many distinct queries."),
    exclude: list[Path] = typer.Option([], "--exclude", help="Query file(s) (JSONL with qid, query) whose "
                                       "held-out queries (qid number divisible by 3) must never be emitted."),
    exclude_all: bool = typer.Option(False, help="Exclude every query of --exclude files, not only held-out ones."),
    vocabulary: Optional[str] = typer.Option(None, "--vocabulary", help="Shop vocabulary: a built-in name "
                                             "(fashion) or a JSON file (default: the one the catalog's preset names)."),
    typo_rate: Optional[float] = typer.Option(None, help="Share of misspelled queries (default 0.15)."),
    seed: int = typer.Option(0),
):
    """Write a pool of shopper queries (keyword, synonym, intent, long, misspelled) from the catalog and
    the shop's vocabulary (for a catalog with no search logs)."""
    from ..clihelp import console, user_errors
    from ..data.catalog import Catalog
    from ..io import write_jsonl
    from ..settings import is_heldout_qid
    from .queries import read_queries, synthesize_queries as synth
    from .vocabulary import vocabulary_for

    with user_errors():
        cat = Catalog.open(catalog)
        vocab = vocabulary_for(cat, vocabulary)
        for problem in vocab.check(cat)[:10]:
            console.print(f"[yellow]vocabulary {vocab.source}: {problem}[/]")
        excluded = []
        for f in exclude:
            q = read_queries(f)
            excluded += q["query"].tolist() if exclude_all else q.loc[q["qid"].map(is_heldout_qid), "query"].tolist()
        df = synth(cat, n=n, seed=seed, exclude=excluded, typo_rate=typo_rate, vocabulary=vocab)
        write_jsonl(out, df.to_dict("records"))
    console.print(f"{len(df)} queries -> {out} ({len(excluded)} excluded texts; vocabulary {vocab.name}); styles: "
                  + ", ".join(f"{k} {v}" for k, v in df["style"].value_counts().items()))


def _candidate_options(k_bm25, k_dense, n_random, model, embeddings, dense_minilm, catalog, seed):
    from .candidates import DenseRetriever

    if (model is None) != (embeddings is None):
        raise ValueError("--model and --embeddings go together (the model's query encoder vs its product embeddings)")
    dense = None
    if model is not None:
        dense = DenseRetriever.from_dirs(model, embeddings)
    elif dense_minilm:
        dense = DenseRetriever.from_sentence_encoder(catalog)
    return dict(k_bm25=k_bm25, k_dense=k_dense, n_random=n_random, dense=dense, seed=seed)


K_BM25 = typer.Option(20, help="Top K products by BM25 per query.")
K_DENSE = typer.Option(20, help="Top K products by the embeddings per query (with --model/--embeddings or --dense-minilm).")
N_RANDOM = typer.Option(5, help="Random products per query.")
MODEL = typer.Option(None, "--model", help="dashclip model dir: its query encoder finds candidates.")
EMBEDDINGS = typer.Option(None, "--embeddings", help="Product embeddings dir of --model (`dashclip embed-catalog`).")
DENSE_MINILM = typer.Option(False, help="Use off-the-shelf MiniLM over product text as the dense source.")


@labels_app.command("candidates")
def candidates(
    catalog: Path = CATALOG,
    queries: Path = typer.Option(..., "--queries", help="Query file: JSONL/CSV/TSV with a 'query' column, or text."),
    out: Path = typer.Option(..., "--out", help="Pairs Parquet (qid, query, product_id, source)."),
    k_bm25: int = K_BM25, k_dense: int = K_DENSE, n_random: int = N_RANDOM,
    model: Optional[Path] = MODEL, embeddings: Optional[Path] = EMBEDDINGS, dense_minilm: bool = DENSE_MINILM,
    k_reading: int = typer.Option(10, help="Products that fit a synthesized query's reading, per query."),
    k_near: int = typer.Option(4, help="Products that nearly fit it (a value or the category off), per query."),
    seed: int = typer.Option(0),
):
    """Pick the (query, product) pairs to grade: BM25 top K, embedding top K, products that fit a
    synthesized query's reading, a few random; deduplicated."""
    from ..clihelp import console, progress, user_errors
    from ..data.catalog import Catalog
    from ..io import save_with
    from .candidates import pick_candidates
    from .queries import read_queries

    with user_errors():
        cat = Catalog.open(catalog)
        q = read_queries(queries)
        opts = _candidate_options(k_bm25, k_dense, n_random, model, embeddings, dense_minilm, cat, seed)
        with progress() as bar:
            task = bar.add_task("candidates", total=len(q))
            df = pick_candidates(cat, q, progress=lambda n: bar.advance(task, n), k_reading=k_reading,
                                 k_near=k_near, **opts)
        save_with(out, lambda p: df.to_parquet(p, index=False))
    console.print(f"{len(df)} pairs for {len(q)} queries -> {out} ("
                  + ", ".join(f"{k} {v}" for k, v in df["source"].value_counts().items()) + ")")


@labels_app.command("seed-from-qrels")
def seed_from_qrels(
    catalog: Path = CATALOG,
    queries: Path = typer.Option(..., "--queries", help="Graded query file (JSONL with qid, query)."),
    qrels: Path = typer.Option(..., "--qrels", help="TSV qid, product_id, label (label > 0 rows; others are 0)."),
    out: Path = typer.Option(..., "--out", help="Seed grades Parquet."),
    k_bm25: int = K_BM25, k_dense: int = K_DENSE, n_random: int = N_RANDOM,
    model: Optional[Path] = MODEL, embeddings: Optional[Path] = EMBEDDINGS, dense_minilm: bool = DENSE_MINILM,
    seed: int = typer.Option(0),
):
    """Seed grades: each query's candidates graded from qrels, as an annotator would judge them."""
    from ..clihelp import console, user_errors
    from ..data.catalog import Catalog
    from ..io import save_with
    from .grades import split_by_query
    from .queries import read_queries
    from .seed import read_qrels, seed_from_qrels as build

    with user_errors():
        cat = Catalog.open(catalog)
        opts = _candidate_options(k_bm25, k_dense, n_random, model, embeddings, dense_minilm, cat, seed)
        df = build(cat, read_queries(queries), read_qrels(qrels), version=qrels.name, **opts)
        save_with(out, lambda p: df.to_parquet(p, index=False))
    train, held = split_by_query(df)
    console.print(f"{len(df)} seed grades -> {out}: train {len(train)} ({train['qid'].nunique()} queries), "
                  f"held-out {len(held)} ({held['qid'].nunique()} queries); grade counts "
                  f"{df['grade'].value_counts().sort_index().to_dict()}")


@labels_app.command("train")
def train(
    catalog: Path = CATALOG,
    seed_grades: Path = typer.Option(..., "--seed", help="Seed grades Parquet (held-out queries are left out)."),
    out: Path = typer.Option(..., "--out", help="Labeler dir (HF model + labeler.json)."),
    base: Optional[str] = typer.Option(None, help="Base encoder dir or hub id (default: all-MiniLM-L6-v2)."),
    max_length: int = typer.Option(64), epochs: int = typer.Option(3), batch_size: int = typer.Option(32),
    lr: float = typer.Option(5e-5), seed: int = typer.Option(0, "--random-seed"),
    amp: str = typer.Option("auto", help="Precision of training and grading: bf16, none, or auto (bf16 where native)."),
    vocabulary: Optional[str] = typer.Option(None, "--vocabulary", help="Shop vocabulary whose shopper words the "
                                             "labeler reads with each product (default: the catalog preset's; "
                                             "'none' for none)."),
    reading_queries: int = typer.Option(0, help="Also train on this many synthesized queries graded by their "
                                        "readings (needs a vocabulary): the vocabulary's words, taught."),
    exclude: list[Path] = typer.Option([], help="Query files whose queries the reading queries must not repeat "
                                       "(the held-out queries, the pool to be graded); repeatable."),
):
    """Fine-tune the cross-encoder labeler on the training split of seed grades."""
    from ..clihelp import console, progress, user_errors
    from ..data.catalog import Catalog
    from .labelers.cross_encoder import CrossEncoderConfig, train_from_seed
    from .vocabulary import vocabulary_for

    with user_errors():
        cat = Catalog.open(catalog)
        vocab = None if vocabulary == "none" else vocabulary_for(cat, vocabulary)
        vocab = None if vocab is None or vocab.is_empty else vocab
        grades = _read_seed(seed_grades)
        extra = None
        if reading_queries:
            if vocab is None:
                raise ValueError("--reading-queries needs a vocabulary (--vocabulary NAME|FILE)")
            from .consistency import reading_examples
            from .queries import read_queries

            avoid = [q for f in exclude for q in read_queries(f)["query"]] + grades["query"].tolist()
            extra = reading_examples(cat, vocab, reading_queries, seed=seed + 7, exclude=avoid)
            console.print(f"{len(extra)} reading-graded pairs of {extra['qid'].nunique()} synthesized queries")
        config = CrossEncoderConfig(max_length=max_length, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                    amp=None if amp == "none" else amp)
        with progress() as bar:
            task = bar.add_task("train", total=None)

            def step(i, total, loss):
                bar.update(task, completed=i, total=total, description=f"train loss {loss:.3f}")

            summary = train_from_seed(grades, cat, out, base=base, config=config, progress=step, vocabulary=vocab,
                                      extra=extra)
    console.print(f"labeler {summary['version']} ({summary['train_pairs']} pairs, {summary['steps']} steps, "
                  f"{summary['train_seconds']} s, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}) -> {out}")


LABELER = typer.Option("cross-encoder", "--labeler", help="cross-encoder (default), llm or minilm-cosine.")
LABELER_PATH = typer.Option(None, "--labeler-path", help="Labeler dir (cross-encoder) or JSON (minilm-cosine).")
LLM_SEED = typer.Option(None, "--seed", help="Seed grades: few-shot examples for the llm labeler.")
CACHE = typer.Option(None, "--cache-dir", help="llm: answer cache dir (a re-run costs nothing).")
CONCURRENCY = typer.Option(8, help="llm: concurrent requests.")


@labels_app.command("grade")
def grade(
    catalog: Path = CATALOG,
    pairs: Path = typer.Option(..., "--pairs", help="Pairs Parquet (`dashclip labels candidates` output)."),
    out: Path = typer.Option(..., "--out", help="Grade shard dir; re-run the same command to resume."),
    labeler: str = LABELER, labeler_path: Optional[Path] = LABELER_PATH,
    seed_grades: Optional[Path] = LLM_SEED, cache_dir: Optional[Path] = CACHE, concurrency: int = CONCURRENCY,
    shard_size: int = typer.Option(4096, help="Pairs per Parquet shard (the unit of resumption)."),
    batch_size: int = typer.Option(128, help="Pairs per labeler call."),
    max_shards: Optional[int] = typer.Option(None, help="Stop after this many new shards."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Grade on Ray Data: 'local' starts "
                                      "Ray on this machine, 'auto' joins the cluster `ray start --head` runs here, "
                                      "or a cluster address. The same shards as without it."),
    ray_workers: int = typer.Option(2, "--ray-workers", min=1, help="Ray actors, each building the labeler once."),
    ray_threads: int = typer.Option(1, "--ray-threads", min=1, help="CPU threads (and Ray CPUs) per actor."),
):
    """Grade many pairs with a labeler into resumable Parquet shards."""
    from ..clihelp import console, progress, user_errors
    from ..data.catalog import Catalog
    from .grading import PAIRS_PER_CALL, RayGrading, grade_pairs

    with user_errors():
        cat = Catalog.open(catalog)
        df = _read_parquet(pairs, "pairs")
        spec = _labeler_spec(labeler, labeler_path, cat, seed_grades, cache_dir, concurrency, batch_size)
        lab = spec.build()
        on_ray = None if ray is None else RayGrading(spec, ray_workers, None if ray == "local" else ray, ray_threads)
        with progress() as bar:
            task = bar.add_task(f"grade ({labeler})", total=None)
            summary = grade_pairs(df, cat, lab, out, shard_size=shard_size,
                                  batch_size=max(PAIRS_PER_CALL, batch_size),
                                  max_shards=max_shards, ray=on_ray,
                                  progress=lambda n: bar.update(task, advance=n, total=bar.tasks[0].total or None))
    run = summary["this_run"]
    console.print(f"{summary['shards_done']}/{summary['shards']} shards done ({summary['pairs']} pairs); this run "
                  f"graded {run['graded']}, failed {run['failed']}, {run['pairs_per_second']} pairs/s -> {out}")
    if not summary["complete"]:
        console.print("not complete: re-run the same command to continue")


@labels_app.command("check")
def check(
    catalog: Path = CATALOG,
    grades: Path = typer.Option(..., "--grades", help="Grade shard dir or Parquet (`dashclip labels grade`)."),
    queries: Path = typer.Option(..., "--queries", help="The synthesized query pool (with its readings)."),
    out: Path = typer.Option(..., "--out", help="Parquet of the grades that agree with their query's reading "
                             "(a .json report is written beside it)."),
):
    """Keep the model grades that agree with what each synthesized query was built to mean."""
    from ..clihelp import console, user_errors
    from ..data.catalog import Catalog
    from ..io import save_with, write_json
    from . import load_grades
    from .consistency import keep_consistent
    from .queries import read_queries

    with user_errors():
        cat = Catalog.open(catalog)
        kept, report = keep_consistent(load_grades(grades), read_queries(queries), cat)
        save_with(out, lambda p: kept.to_parquet(p, index=False))
        write_json(out.with_suffix(".json"), report)
    console.print(f"{report['kept']} of {report['pairs']} grades kept -> {out}; agreement with the readings "
                  f"{report['agreement']}: " + ", ".join(f"{k} {v['agreement']}" for k, v in report["per_style"].items()))


@labels_app.command("evaluate")
def evaluate(
    catalog: Path = CATALOG,
    seed_grades: Path = typer.Option(..., "--seed", help="Seed grades Parquet; its held-out queries are graded."),
    labeler: str = LABELER, labeler_path: Optional[Path] = LABELER_PATH,
    out: Optional[Path] = typer.Option(None, "--out", help="Report JSON (a .md is written beside it)."),
    cache_dir: Optional[Path] = CACHE, concurrency: int = CONCURRENCY,
    batch_size: int = typer.Option(128),
):
    """Accuracy, quadratic-weighted kappa and confusion matrix of a labeler on held-out seed grades."""
    from ..clihelp import console, user_errors
    from ..data.catalog import Catalog
    from ..io import write_json, write_text
    from .evaluate import evaluate_labeler, report_markdown

    with user_errors():
        cat = Catalog.open(catalog)
        seed = _read_seed(seed_grades)
        lab = _make_labeler(labeler, labeler_path, cat, seed_grades, cache_dir, concurrency, batch_size)
        report = evaluate_labeler(lab, seed, cat, batch_size=batch_size)
        if out is not None:
            write_json(out, report)
            write_text(out.with_suffix(".md"), report_markdown(report))
    typer.echo(report_markdown(report))


@labels_app.command("export-finetune")
def export_finetune(
    catalog: Path = CATALOG,
    seed_grades: Path = typer.Option(..., "--seed", help="Seed grades Parquet."),
    out: Path = typer.Option(..., "--out", help="Chat-format JSONL of the training seed grades."),
    validation: Optional[Path] = typer.Option(None, help="Also write held-out seed grades here."),
):
    """Write seed grades as chat-format fine-tuning JSONL (to fine-tune an LLM labeler)."""
    from ..clihelp import console, user_errors
    from ..data.catalog import Catalog
    from .finetune_export import export_finetune as export

    with user_errors():
        counts = export(_read_seed(seed_grades), Catalog.open(catalog), out, validation)
    console.print(f"fine-tuning examples: {counts} -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels")
