"""Stage 2 benchmark: query encoders on the full fashion catalog, on the held-out dev queries.

Ranks all 44,072 products for each of the 40 dev queries held out from every training step (qid
number divisible by 3) and scores NDCG@10, Recall@100 and MRR, overall and per query style, with
the project's evaluators (`dashclip.evaluation`), for:

    bm25                BM25 over title + attributes (dashclip.text.BM25 via the evaluation baseline)
    minilm              off-the-shelf all-MiniLM-L6-v2, query vs title, cosine
    stage1_text         the Stage 1 text tower as query encoder against the fused product embeddings (no QCC)
    stage2_seed         Stage 2 trained on seed grades only
    stage2_full         Stage 2 trained on seed + model-graded pairs (the paper's recipe, as dashclip ships
                        it: the labeler's grades of the synthesized pool that agree with each query's
                        reading, `dashclip labels check`)
    stage2_full_unchecked   seed + every model grade of the pool (no consistency check): ablation
    stage2_readings     seed + the grades the pool's readings say, no labeler at all: what a perfect
                        labeler of the vocabulary's meaning would give (a reference, not the recipe)
    stage2_*_wise       the same training run, saved as start + 0.75 * (trained - start) (WiSE-FT,
                        --wise-alpha; AlignConfig's default, what `dashclip align` saves)
    stage2_full_<v>     the same with QCC variant <v> (symmetric, graded): the default-variant ablation

Inputs (each built through the other stages' Python APIs when not given; what was used is recorded):
    --model       Stage 1 model dir (else create_model("default"))
    --embeddings  its product embeddings dir (else computed with the model and cached in --work)
    --catalog     the imported fashion catalog dir (else imported into --work)
    --seed-grades, --model-grades  grade Parquet files/dirs (else seed grades are built; model grades
                  are then skipped and stage2_full is not run); --unchecked-grades (the labeler's
                  grade shards before the check) and --pool (the synthesized queries with their
                  readings) for the two ablations

Check queries (--check-queries, default benchmarks/check_queries.jsonl): 30 more queries of the five
styles, written on 2026-12-01 after the 40 held-out ones had been looked at through many runs, so a
setting chosen on those 40 would show its overfit here. Scored beside them, reported apart; the ones a
grade input or the pool holds word for word (the synthesizer makes some) are left out.

Usage (the demo's Stage 1 model, embeddings, catalog and seed grades; the model grades of
benchmarks/stage2_labels.py, which builds a 6,000-query pool from the same demo dir):
    python benchmarks/stage2_labels.py --demo runs/demo --out runs/bench_stage2/labels-6000
    python benchmarks/stage2_align.py --model runs/demo/stage1/model --embeddings runs/demo/embeddings \
        --catalog runs/demo/catalog --seed-grades runs/demo/labels/seed.parquet \
        --model-grades runs/bench_stage2/labels-6000/checked.parquet \
        --unchecked-grades runs/bench_stage2/labels-6000/grades --pool runs/bench_stage2/labels-6000/pool.parquet \
        --work runs/bench_stage2_6000
(the demo's own labels, runs/demo/labels/checked.parquet etc., work too: the demo's 2,200-query pool).
Writes benchmarks/results/stage2_align.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METRICS = ("ndcg@10", "recall@100", "mrr")


def machine() -> dict:
    from _machine import cpu_model
    import torch

    cpu = cpu_model()

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')} load {loadavg()[0]}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--embeddings", type=Path)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--seed-grades", type=Path, nargs="*")
    ap.add_argument("--model-grades", type=Path, nargs="*")
    ap.add_argument("--unchecked-grades", type=Path, nargs="*")
    ap.add_argument("--pool", type=Path, help="the synthesized query pool (with readings) of the model grades")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_stage2")
    ap.add_argument("--systems", default="bm25,minilm,stage1_text,stage2_seed_wise,stage2_full_wise",
                    help="the issue's table by default (about 45 min here); also: stage2_seed, stage2_full (no "
                         "WiSE-FT), stage2_full_unchecked_wise, stage2_readings_wise (each another full training), "
                         "stage2_full_symmetric, stage2_full_graded (the QCC-variant ablation)")
    # Defaults: the demo's Stage 2 settings (pipeline.config.fashion_config().stage2, AlignConfig), trained longer, as the larger
    # label pool of benchmarks/stage2_labels.py allows: 2,000 steps (~7 epochs of its 36,224 checked grades;
    # 400, 800, 1,200 and 2,000 steps scored 0.760, 0.781, 0.806, 0.823 on 2026-12-01). Seed-only training
    # stops at --epochs first (100 steps).
    from dashclip.pipeline.config import fashion_config
    from dashclip.training.align import AlignConfig
    shipped = fashion_config().stage2
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=shipped.lr)
    ap.add_argument("--wise-alpha", type=float, default=AlignConfig().wise_alpha,
                    help="alpha of the *_wise systems (WiSE-FT; default AlignConfig's, what dashclip align saves)")
    ap.add_argument("--check-queries", type=lambda v: Path(v) if v else None,
                    default=REPO / "benchmarks" / "check_queries.jsonl",
                    help="a second query set (fashion-queries format) scored beside the held-out one; queries "
                         "that a grade input holds word for word are left out ('' for none)")
    ap.add_argument("--out", type=Path, default=RESULTS / "stage2_align.json")
    ap.add_argument("--merge", action="store_true", help="keep the systems already in --out that this run "
                    "does not measure (e.g. add the QCC-variant ablation to an earlier run's table)")
    args = ap.parse_args(argv)

    import dashclip  # noqa: F401  (fails early if the package is not installed)
    from dashclip.settings import dataset_dir, is_heldout_qid

    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "stage2_align", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "loadavg_start": loadavg(), "inputs": {}, "systems": {}, "notes": []}
    wanted = [s for s in args.systems.split(",") if s]
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())
        record["systems"] = {k: v for k, v in earlier.get("systems", {}).items() if k not in wanted}
        record["notes"] = earlier.get("notes", []) + [f"{', '.join(record['systems'])} measured in the run of "
                                                      f"{earlier.get('started')}; {', '.join(wanted)} in this one"]
        record["inputs"] = earlier.get("inputs", {})

    catalog = open_catalog(args, record)
    queries_path = dataset_dir("fashion-queries") / "dev_queries.jsonl"
    all_queries = [json.loads(line) for line in open(queries_path) if line.strip()]
    heldout = [q for q in all_queries if is_heldout_qid(q["qid"])]
    record["inputs"]["heldout_queries"] = {"file": str(queries_path), "count": len(heldout),
                                           "styles": _count(q["style"] for q in heldout)}
    evaluate = make_evaluator(heldout, catalog, record)
    # A second, smaller check: queries written after the held-out ones had been looked at many times (so a
    # choice tuned on those 40 shows here), minus any that a training input holds word for word.
    check, evaluate_check = [], None
    if args.check_queries:
        trained = trained_query_texts(args, [q["query"] for q in all_queries])
        written = [json.loads(line) for line in open(args.check_queries) if line.strip()]
        check = [q for q in written if q["query"].strip().lower() not in trained]
        record["inputs"]["check_queries"] = {"file": str(args.check_queries), "count": len(check),
                                             "left_out_as_trained_on": len(written) - len(check),
                                             "styles": _count(q["style"] for q in check)}
        evaluate_check = make_evaluator(check, catalog, record) if check else None

    def run(name, fn):
        if name not in wanted:
            return
        log(f"{name} ...")
        t = time.time()
        try:
            rankings, info = fn()
        except Exception as e:  # record and go on: one missing input must not lose the other figures
            import traceback

            traceback.print_exc()
            record["systems"][name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} failed: {e}")
            return
        scores = evaluate(rankings[:len(heldout)])
        if evaluate_check is not None:
            scores["check"] = evaluate_check(rankings[len(heldout):])
        record["systems"][name] = {**scores, **info, "seconds": round(time.time() - t, 1),
                                   "loadavg": loadavg()}
        log(f"{name}: ndcg@10 {scores['overall']['ndcg@10']:.3f}  ({time.time() - t:.0f}s)")
        save(record, args.out)

    texts = [q["query"] for q in heldout + check]      # ranked together; scored apart
    run("bm25", lambda: baseline_bm25(catalog, texts))
    run("minilm", lambda: baseline_minilm(catalog, texts, args.work))

    needs_model = [s for s in wanted if s.startswith("stage")]
    if needs_model:
        model, product_ids, product_vectors = stage1_inputs(args, catalog, record)

        def rank_with(m):     # ranked as `dashclip eval` ranks (products with an image, one tie rule)
            from dashclip.evaluation.baselines import model_rankings

            m.eval()
            return model_rankings(m, product_vectors, product_ids, texts, k=100, catalog=catalog)

        run("stage1_text", lambda: (rank_with(model), {"query_encoder": "Stage 1 text tower + projection"}))

        seed, full, unchecked, readings = grade_inputs(args, catalog, record, heldout)
        # Each *_wise system reuses the training run of its base system when that one ran first.
        runs = [("stage2_seed", seed, "qcc"), ("stage2_full", full, "qcc"), ("stage2_full_unchecked", unchecked, "qcc"),
                ("stage2_readings", readings, "qcc"), ("stage2_full_symmetric", full, "symmetric"),
                ("stage2_full_graded", full, "graded")]
        for name, grades, variant in [(b + w, g, v) for b, g, v in runs for w in ("", "_wise")]:
            if name not in wanted:
                continue
            if grades is None:
                record["systems"][name] = {"skipped": "no model-graded pairs were given"}
                continue
            run(name, lambda g=grades, v=variant, n=name: train_and_rank(
                args, n, g, v, product_ids, product_vectors, heldout, rank_with))

    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["loadavg_end"] = loadavg()
    record["seconds"] = round(time.time() - t0, 1)
    record["targets"] = targets(record)
    save(record, args.out)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# ----------------------------------------------------------------------------------------------
# Inputs, each through the owning stage's API


def open_catalog(args, record):
    from dashclip.data.catalog import Catalog

    path = args.catalog or (args.work / "catalog")
    if not (path / "catalog.parquet").exists():
        log(f"importing the fashion catalog into {path}")
        from dashclip.data.importer import import_catalog

        import_catalog("fashion-product-images-small", path)
    cat = Catalog.open(path)
    record["inputs"]["catalog"] = {"dir": str(path), "products": len(cat), "content_hash": cat.content_hash}
    return cat


def trained_query_texts(args, dev_queries) -> set[str]:
    """Every query text (lowercased) of the dev set and the grade and pool inputs: what Stage 2 or the
    labeler may have seen."""
    import pandas as pd

    from dashclip.training.align_data import read_grades

    texts = set(dev_queries)
    grades = [*(args.seed_grades or []), *(args.model_grades or []), *(args.unchecked_grades or [])]
    if grades:
        texts |= set(read_grades(grades)["query"])
    if args.pool:
        texts |= set(pd.read_parquet(args.pool, columns=["query"])["query"])
    return {t.strip().lower() for t in texts}


def make_evaluator(heldout, catalog, record):
    """Metrics from dashclip.evaluation (the same code path as `dashclip eval`)."""
    from dashclip.evaluation.metrics import evaluate_rankings
    from dashclip.evaluation.qrels import fashion_qrels

    qrels = fashion_qrels(heldout)
    styles = {q["qid"]: q["style"] for q in heldout}
    qids = [q["qid"] for q in heldout]

    def evaluate(rankings):
        runs = {qid: list(r) for qid, r in zip(qids, rankings)}
        return evaluate_rankings(runs, qrels, styles=styles, metrics=METRICS)

    return evaluate


def baseline_bm25(catalog, texts):
    from dashclip.evaluation.baselines import bm25_rankings

    return bm25_rankings(catalog, texts, k=100), {"docs": "title + attributes (product_text)"}


def baseline_minilm(catalog, texts, work):
    from dashclip.evaluation.baselines import minilm_rankings

    return minilm_rankings(catalog, texts, k=100, field="title", cache_dir=work), {"docs": "title"}


def stage1_inputs(args, catalog, record):
    """(model with its Stage 1 text tower as query encoder, product ids, fused product vectors)."""
    import dashclip

    if args.model:
        model = dashclip.load(args.model)
        record["inputs"]["model"] = {"dir": str(args.model), "model_id": model.model_id}
    else:
        model = dashclip.create_model("default")
        record["inputs"]["model"] = {"dir": None, "note": "no Stage 1 model given: create_model('default'), "
                                     "not catalog-pretrained", "model_id": model.model_id}
    emb_dir = args.embeddings
    if emb_dir is None:
        emb_dir = args.work / f"embeddings-{model.model_id[:12]}"
        if not (emb_dir / "meta.json").exists():
            log(f"embedding {len(catalog)} products into {emb_dir} (slow on CPU)")
            from dashclip.models.embeddings import embed_catalog

            embed_catalog(model, catalog, emb_dir)
    from dashclip.training.align import load_product_vectors

    ids, vectors = load_product_vectors(model, emb_dir)
    record["inputs"]["embeddings"] = {"dir": str(emb_dir), "products": int(len(ids)), "dim": int(vectors.shape[1])}
    if len(ids) != len(catalog):
        record["notes"].append(f"embeddings cover {len(ids)} products, the catalog {len(catalog)}")
    return model, list(ids), vectors


def grade_inputs(args, catalog, record, heldout):
    """(seed grades, seed + model grades, seed + unchecked model grades, seed + reading grades) as
    DataFrames (None where the input was not given); held-out query texts are dropped later too."""
    import pandas as pd

    from dashclip.training.align_data import read_grades

    if args.seed_grades:
        seed = pd.concat([read_grades(p) for p in args.seed_grades], ignore_index=True)
        record["inputs"]["seed_grades"] = {"paths": [str(p) for p in args.seed_grades], "rows": len(seed)}
    else:
        from dashclip.labeling.seed import seed_grades

        seed = seed_grades(catalog)
        record["inputs"]["seed_grades"] = {"built": "dashclip.labeling.seed.seed_grades", "rows": len(seed)}
    full = None
    if args.model_grades:
        graded = pd.concat([read_grades(p) for p in args.model_grades], ignore_index=True)
        record["inputs"]["model_grades"] = {"paths": [str(p) for p in args.model_grades], "rows": len(graded),
                                            "labelers": sorted(map(str, graded.get("labeler", pd.Series()).unique()))}
        full = pd.concat([seed, graded], ignore_index=True)
    unchecked = readings = None
    if args.unchecked_grades:
        raw = pd.concat([read_grades(p) for p in args.unchecked_grades], ignore_index=True)
        record["inputs"]["unchecked_grades"] = {"paths": [str(p) for p in args.unchecked_grades], "rows": len(raw)}
        unchecked = pd.concat([seed, raw], ignore_index=True)
        if args.pool:
            from dashclip.labeling.consistency import NO_READING, reading_grades

            pool = pd.read_parquet(args.pool)
            said = reading_grades(raw, pool, catalog)
            by_reading = raw[said != NO_READING].assign(grade=said[said != NO_READING], confidence=1.0,
                                                        labeler="reading", labeler_version=str(args.pool))
            record["inputs"]["pool"] = {"path": str(args.pool), "queries": len(pool),
                                        "reading_graded_pairs": len(by_reading)}
            readings = pd.concat([seed, by_reading], ignore_index=True)
    return seed, full, unchecked, readings


def train_and_rank(args, name, grades, variant, product_ids, product_vectors, heldout, rank_with):
    import dashclip
    from dashclip.training.align import AlignConfig, align
    from dashclip.training.loop import LoopConfig

    out = args.work / name
    wise = name.endswith("_wise")
    base = args.work / name[:-len("_wise")] if wise else None
    if wise and (base / "checkpoints").exists() and not (out / "checkpoints").exists():
        import shutil            # the same training run as `base`, only the saved weights differ: reuse it

        shutil.copytree(base / "checkpoints", out / "checkpoints")
    config = AlignConfig(variant=variant, wise_alpha=args.wise_alpha if wise else 1.0)
    loop = LoopConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=20, ckpt_every=50, log_every=10, eval_every_epoch=False, progress=False,
                      amp="auto", resume=(out / "checkpoints" / "last.pt").exists())
    model = dashclip.load(args.model) if args.model else None
    if model is None:
        import torch

        torch.manual_seed(0)
        model = dashclip.create_model("default")
    summary = align(args.model, grades, out, config, loop, model=model,
                    product_table=(np.asarray(product_ids), product_vectors),
                    exclude_queries={q["query"] for q in heldout})   # check queries an input holds are not scored
    info = {"variant": variant, "steps": summary["steps"], "train_seconds": summary["seconds"],
            "grades": summary["grades"], "table": summary["table"], "final_loss": summary["last"].get("loss_avg"),
            "align": summary["align"], "lr": args.lr}
    return rank_with(model), info


# ----------------------------------------------------------------------------------------------
# Report


def targets(record) -> dict:
    s = record["systems"]

    def ndcg(name):
        return (s.get(name) or {}).get("overall", {}).get("ndcg@10")

    # The recipe as dashclip ships it, with AlignConfig's default WiSE-FT setting.
    from dashclip.training.align import AlignConfig

    suffix = "_wise" if AlignConfig().wise_alpha < 1.0 and ndcg("stage2_full_wise") is not None else ""
    full, seed = ndcg("stage2_full" + suffix), ndcg("stage2_seed" + suffix)
    bm25, minilm = ndcg("bm25"), ndcg("minilm")
    out = {"systems_compared": ["stage2_full" + suffix, "stage2_seed" + suffix]}
    if full is not None and bm25:
        out["full_vs_bm25_rel"] = round(full / bm25 - 1, 3)
        out["beats_bm25_by_25pct"] = full >= 1.25 * bm25
    if full is not None and minilm:
        out["full_vs_minilm_rel"] = round(full / minilm - 1, 3)
        out["beats_minilm_by_25pct"] = full >= 1.25 * minilm
    if full is not None and seed is not None:
        out["beats_seed_only"] = full > seed
    return out


def save(record, out: Path) -> None:
    from dashclip.io import write_json, write_text

    write_json(out, record)
    write_text(out.with_suffix(".md"), markdown(record))


def markdown(record) -> str:
    m = record["machine"]
    lines = [f"# Stage 2 (align) benchmark", "",
             f"Run {record['started']} on {m['nproc']} x {m['cpu']} (torch {m['torch']}, "
             f"{'GPU ' + m['cuda'] if m.get('cuda') else 'CPU only'}); load average at start "
             f"{record['loadavg_start']}, at end {record.get('loadavg_end')}.",
             f"Held-out dev queries: {record['inputs'].get('heldout_queries', {}).get('count')} "
             f"(qid divisible by 3, never trained on), ranking the full catalog "
             f"({record['inputs'].get('catalog', {}).get('products')} products).", "",
             "| system | NDCG@10 | Recall@100 | MRR | notes |", "|---|---:|---:|---:|---|"]
    for name, r in record["systems"].items():
        if "overall" not in r:
            lines.append(f"| {name} | | | | {r.get('error') or r.get('skipped')} |")
            continue
        o = r["overall"]
        note = ", ".join(f"{k} {r[k]}" for k in ("variant", "steps") if k in r)
        if r.get("align", {}).get("wise_alpha", 1.0) != 1.0:
            note += f", WiSE-FT alpha {r['align']['wise_alpha']}"
        lines.append(f"| {name} | {o['ndcg@10']:.3f} | {o['recall@100']:.3f} | {o['mrr']:.3f} | {note} |")
    styles = sorted({st for r in record["systems"].values() for st in r.get("per_style", {})})
    if styles:
        lines += ["", "NDCG@10 per query style:", "",
                  "| system | " + " | ".join(styles) + " |", "|---|" + "---:|" * len(styles)]
        for name, r in record["systems"].items():
            if "per_style" in r:
                lines.append(f"| {name} | " + " | ".join(
                    f"{r['per_style'].get(st, {}).get('ndcg@10', float('nan')):.3f}" for st in styles) + " |")
    check = record["inputs"].get("check_queries")
    if check and any("check" in r for r in record["systems"].values()):
        lines += ["", f"Check queries (`{Path(check['file']).name}`: {check['count']} queries that no training input holds; "
                  f"{check['left_out_as_trained_on']} more left out because one does):", "",
                  "| system | NDCG@10 | Recall@100 | MRR |", "|---|---:|---:|---:|"]
        for name, r in record["systems"].items():
            if "check" in r:
                o = r["check"]["overall"]
                lines.append(f"| {name} | {o['ndcg@10']:.3f} | {o['recall@100']:.3f} | {o['mrr']:.3f} |")
    if record.get("targets"):
        lines += ["", "Targets: " + json.dumps(record["targets"])]
    if record.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in record["notes"]]
    lines += ["", "Inputs: `" + json.dumps(record["inputs"], default=str) + "`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
