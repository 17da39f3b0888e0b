"""The phrasing-held-out protocol: search quality on shopper phrasing that no training input holds.

The shop vocabulary (src/dashclip/labeling/vocabularies/fashion.json) is split by `phrasing.split_vocabulary`
(seeded, per category / attribute value / need, by a hash of each phrase) into a training half and a
held-out half. The training pool is synthesized from the training half only (`synthesize_queries(...,
vocabulary=train_vocab)`, written to --work for Stage 2 to train on); the evaluation queries from the
held-out half (the same synthesizer, another seed), each labelled by the fashion-queries label rule (its
reading as that dataset's predicate, `phrasing.reading_to_predicate`, through the dataset's labels.py).
An evaluation query is left out when its text holds a phrase of the training half (by content tokens,
`phrasing.PhraseMatcher`; the catalog's own words, which every pool uses, do not count), and a synonym,
intent or long query is kept only when it holds a held-out phrase that is not a catalog word.

Every run scores each system on three sets:
    phrasing   the phrasing-held-out queries, per style (keyword: the catalog's own words, a control)
    dev40      the 40 held-out dev queries (qid number divisible by 3), split by whether the vocabulary
               (after the audit's removal; + the catalog's own words) can build them (`phrasing.buildable`)
    check      benchmarks/check_queries.jsonl
Systems: BM25 (title + attributes) and off-the-shelf MiniLM (query vs title + attributes) always, MiniLM vs
title too; each --model DIR (repeatable: Stage 1 then Stage 2) by its `encode_query` against the fused
product embeddings of --embeddings DIR (one for all models, or one per model). Beside each: the issue's
targets, NDCG@10 >= 1.25x MiniLM (title + attributes) overall, on intent and on synonym queries.

The vocabulary check (`evaluation.vocabulary_check`): each category word of the vocabulary searched alone,
the share whose top 10 holds >= 6 products of an aisle it names; per role for colour, gender and usage words.

    python benchmarks/phrasing_protocol.py [--catalog runs/catalogs/fashion] [--model DIR ... --embeddings DIR]
        [--seed 0] [--work runs/phrasing] [--cache-dir runs/cache/eval]

Writes benchmarks/results/phrasing_protocol.json and .md (--out, --name).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = REPO / "benchmarks" / "results"
KEYS = ("ndcg@10", "recall@100", "mrr")
TARGET = 1.25
REFERENCE = "MiniLM (query vs title + attributes)"
NOVEL_STYLES = ("synonym", "intent", "long")     # must hold a held-out phrase that is not a catalog word


from _machine import commit  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')}] {msg}", flush=True)


def phrase_halves(vocab, seed: int, own: set[str]) -> tuple[list[str], list[str]]:
    """(training-half phrases, held-out-half phrases) of the split of `seed`, without the catalog's own words
    (`own`): what a query must not hold to be scored (training half) or must hold to count as novel phrasing."""
    from dashclip.labeling.phrasing import split_sides
    from dashclip.text import query_key

    side = split_sides(vocab.data, seed)
    own_n = {query_key(o) for o in own}
    return ([p for p, s in side.items() if s == "train" and p not in own_n],
            [p for p, s in side.items() if s == "heldout" and p not in own_n])


def phrasing_sets(catalog, vocab, seed: int, n_train: int, n_candidates: int, per_style: int, exclude: list[str],
                  own: set[str]) -> tuple[object, list[dict], dict]:
    """(training pool, evaluation queries (fashion-queries format + novel/left-out info), record)."""
    from dashclip.labeling.phrasing import PhraseMatcher, reading_to_predicate, split_sides, split_vocabulary, \
        vocabulary_phrases
    from dashclip.labeling.queries import synthesize_queries
    from dashclip.text import query_key

    train_vocab, heldout_vocab = split_vocabulary(vocab, seed)
    side = split_sides(vocab.data, seed)
    train_phrases, heldout_phrases = phrase_halves(vocab, seed, own)
    t = time.time()
    pool = synthesize_queries(catalog, n=n_train, seed=seed, exclude=exclude, vocabulary=train_vocab)
    train_s = time.time() - t
    t = time.time()
    cand = synthesize_queries(catalog, n=n_candidates, seed=seed + 1000,
                              exclude=list(exclude) + pool["query"].tolist(), vocabulary=heldout_vocab)
    trained, novel = PhraseMatcher(train_phrases), PhraseMatcher(heldout_phrases)
    # The label rule grades only products with an image: a value that only image-less products have
    # ("Suits") cannot be asked for.
    imaged = catalog.products[catalog.products["image"].notna()]
    known = {"types": set(imaged["category"].dropna().astype(str)),
             "related_types": set(imaged["category"].dropna().astype(str)),
             **{k: set(imaged[c].dropna().astype(str)) for k, c in (("gender", "gender"), ("colour", "baseColour"),
                                                                    ("usage", "usage")) if c in imaged}}
    kept, left = [], Counter()
    for r in cand.itertuples():
        shared = trained.find(r.query)
        if shared:
            left[f"{r.style}: holds a training-half phrase"] += 1
            continue
        new = novel.find(r.query)
        if r.style in NOVEL_STYLES and not new:
            left[f"{r.style}: no held-out phrase beyond catalog words"] += 1
            continue
        q = reading_to_predicate(r.reading, f"ph-{r.qid[4:]}", r.query, r.style)
        if any(v not in known[k] for k in known for v in q.get(k, [])):
            left[f"{r.style}: asks for a value no product with an image has"] += 1
            continue
        kept.append({**q, "_novel": new})
    by_style: dict[str, list] = {}
    for q in kept:
        by_style.setdefault(q["style"], []).append(q)
    chosen = [q for s in sorted(by_style) for q in by_style[s][:per_style]]
    groups = {g for g in (p["group"] for p in vocabulary_phrases(vocab.data))}
    record = {"seed": seed, "train_pool": {"n": len(pool), "styles": dict(Counter(pool["style"])),
                                           "seconds": round(train_s, 1)},
              "split": {"phrases_train": sum(s == "train" for s in side.values()),
                        "phrases_heldout": sum(s == "heldout" for s in side.values()), "groups": len(groups),
                        "train_phrases_not_catalog_words": len(train_phrases),
                        "heldout_phrases_not_catalog_words": len(heldout_phrases)},
              "candidates": {"n": len(cand), "styles": dict(Counter(cand["style"])),
                             "seconds": round(time.time() - t, 1)},
              "left_out": dict(left), "kept_per_style": {s: len(v) for s, v in sorted(by_style.items())},
              "evaluated_per_style": dict(Counter(q["style"] for q in chosen)),
              "pool_holds_an_eval_query": len({query_key(q["query"]) for q in chosen} & set(pool["query"]))}
    return pool, chosen, record


def conversion_check(queries: list[dict], catalog, labels_module) -> dict:
    """Reading -> predicate -> labels.py, against (1) the dev queries' own labels after predicate -> reading ->
    predicate, and (2) the project's reading grades (`consistency` / `candidates.ReadingSampler`)."""
    import numpy as np

    from dashclip.evaluation.qrels import predicate_qrels
    from dashclip.labeling.candidates import ReadingSampler
    from dashclip.labeling.phrasing import predicate_to_reading, reading_to_predicate

    products = catalog.products
    there = [{k: v for k, v in q.items() if k in ("qid", "query", "style", "types", "gender", "colour", "usage",
                                                  "related_types")} for q in queries]
    back = [reading_to_predicate(predicate_to_reading(q), q["qid"], q["query"], q["style"]) for q in there]
    round_trip = predicate_qrels(there, products, labels_module) == predicate_qrels(back, products, labels_module)
    sampler = ReadingSampler(catalog)
    with_image = products["image"].notna().to_numpy()
    ids = products["id"].to_numpy()
    agree = total = 0
    for q, labels in zip(back, predicate_qrels(back, products, labels_module).values()):
        ours = sampler.grades(predicate_to_reading(q))
        ref = np.array([labels.get(pid, 0) for pid in ids])
        agree += int((ours[with_image] == ref[with_image]).sum())
        total += int(with_image.sum())
    return {"dev_round_trip_labels_equal": round_trip,
            "reading_grades_agree_with_labels_py": round(agree / total, 5) if total else None}


def catalog_own_phrases(catalog) -> set[str]:
    """The catalog's own words (category, gender, colour, usage values), which every pool uses."""
    from dashclip.labeling.phrasing import own_phrases

    products = catalog.products
    return own_phrases({c: products[c].dropna().astype(str).unique().tolist()
                        for c in ("category", "gender", "baseColour", "usage") if c in products})


def protocol_sets(catalog, vocab, seed: int = 0, n_train: int = 2000, n_candidates: int = 3000, per_style: int = 100,
                  check_queries: Path | None = REPO / "benchmarks" / "check_queries.jsonl") -> dict:
    """Everything a run scores systems on: {"pool" (the training pool of the training half), "phrasing" (the
    scored phrasing-held-out queries, with their novel phrases), "protocol" (the record), "sets" (phrasing,
    dev40, check: fashion-queries format), "qrels" (per set), "build" (dev40 qid -> buildable or not),
    "own" (the catalog's own words)}."""
    from dashclip.evaluation.qrels import load_labels_module, load_queries, predicate_qrels
    from dashclip.labeling.phrasing import buildable, vocabulary_phrases
    from dashclip.settings import dataset_dir, is_heldout_qid

    qdir = dataset_dir("fashion-queries")
    labels_module = load_labels_module(qdir / "labels.py")
    dev = load_queries(qdir / "dev_queries.jsonl")
    products = catalog.products
    own = catalog_own_phrases(catalog)
    exclude = [q["query"] for q in dev]
    check = load_queries(check_queries) if check_queries and Path(check_queries).exists() else []
    exclude += [q["query"] for q in check]
    pool, phrasing, protocol = phrasing_sets(catalog, vocab, seed, n_train, n_candidates, per_style, exclude, own)
    heldout = [q for q in dev if is_heldout_qid(q["qid"])]
    texts = sorted({p["phrase"] for p in vocabulary_phrases(vocab.data)}) + sorted(own)
    build = {q["qid"]: "buildable" if buildable(q["query"], texts) else "not buildable" for q in heldout}
    clean = lambda qs: [{k: v for k, v in q.items() if not k.startswith("_")} for q in qs]
    sets = {"phrasing": clean(phrasing), "dev40": heldout, "check": check}
    qrels = {name: predicate_qrels(qs, products, labels_module) for name, qs in sets.items() if qs}
    protocol["conversion_check"] = conversion_check(heldout, catalog, labels_module)
    protocol["dev40_buildable"] = dict(Counter(build.values()))
    return {"pool": pool, "phrasing": phrasing, "protocol": protocol, "sets": sets, "qrels": qrels, "build": build,
            "own": own}


def baseline_systems(catalog, cache_dir, mpnet: bool = False) -> list:
    """BM25 (title + attributes), MiniLM vs title + attributes (the reference) and MiniLM vs title; with
    `mpnet`, off-the-shelf all-mpnet-base-v2 vs title + attributes too (the `mpnet` config's text tower)."""
    from dashclip.data.catalog import product_text
    from dashclip.evaluation import report
    from dashclip.evaluation.baselines import bm25_scorer, minilm_scorer, sentence_scorer

    ranked_products = report.retrieval_products(catalog)
    systems = [bm25_scorer(catalog, ranked_products),
               minilm_scorer(catalog, ranked_products, "text", cache_dir),
               minilm_scorer(catalog, ranked_products, "title", cache_dir)]
    if mpnet:
        from dashclip.models.sentence import SentenceEncoder, mpnet_path

        texts = [product_text(r, catalog.attributes) for r in ranked_products.to_dict("records")]
        systems.append(sentence_scorer("all-mpnet-base-v2 (query vs title + attributes)", texts,
                                       ranked_products["id"].tolist(), SentenceEncoder(mpnet_path()), cache_dir))
    return systems


def model_system(name: str, model, embeddings_dir, catalog):
    """A dashclip model as a system: its `encode_query` against the fused product embeddings of `embeddings_dir`."""
    from dashclip.evaluation import report
    from dashclip.evaluation.baselines import EmbeddingScorer, model_query_encoder

    model.eval()
    emb = report.load_product_embeddings(embeddings_dir, model, catalog)
    mp = report.retrieval_products(catalog, emb.ids)
    return EmbeddingScorer(name, model_query_encoder(model), emb.vectors["fused"][report.align(emb, mp["id"].tolist())],
                           mp["id"].tolist())


def score_system(system, p: dict, catalog, vocab) -> tuple[dict, dict]:
    """(results per set of `protocol_sets`' `p`, with dev40_by_vocabulary; the vocabulary check) of one system."""
    from dashclip.evaluation.evaluators import RetrievalEvaluator
    from dashclip.evaluation.metrics import evaluate_rankings
    from dashclip.evaluation.vocabulary_check import vocabulary_check_scorer

    res = {}
    for name, qs in p["sets"].items():
        if not qs:
            continue
        ev = RetrievalEvaluator(qs, p["qrels"][name], recall_ks=())
        res[name] = ev(system)
        if name == "dev40":
            res["dev40_by_vocabulary"] = evaluate_rankings(ev.rankings, p["qrels"][name], p["build"], metrics=KEYS)
    return res, vocabulary_check_scorer(system, catalog, vocab)


def main(argv=None) -> int:
    from _machine import cpu_model
    from dashclip.data.catalog import Catalog
    from dashclip.evaluation import report
    from dashclip.labeling.vocabulary import Vocabulary
    from dashclip.settings import runs_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=runs_dir() / "catalogs" / "fashion")
    ap.add_argument("--vocabulary", default="fashion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-queries", type=int, default=2000, help="size of the training pool written to --work")
    ap.add_argument("--candidates", type=int, default=3000, help="held-out-half queries synthesized before filtering")
    ap.add_argument("--per-style", type=int, default=100, help="phrasing-held-out queries scored per style")
    ap.add_argument("--model", type=Path, action="append", default=[], help="a dashclip model dir (repeatable)")
    ap.add_argument("--embeddings", type=Path, action="append", default=[],
                    help="fused product embeddings dir: one for every --model, or one per --model")
    ap.add_argument("--mpnet", action="store_true", help="score off-the-shelf all-mpnet-base-v2 too (its five "
                    "PyPI parts installed; about 400 MB)")
    ap.add_argument("--check-queries", type=Path, default=REPO / "benchmarks" / "check_queries.jsonl")
    ap.add_argument("--work", type=Path, default=runs_dir() / "phrasing")
    ap.add_argument("--cache-dir", type=Path, default=runs_dir() / "cache" / "eval")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="phrasing_protocol", help="results file name (<out>/<name>.json and .md)")
    args = ap.parse_args(argv)
    if args.model and len(args.embeddings) not in (1, len(args.model)):
        ap.error("give one --embeddings for all models, or one per --model")

    t0 = time.time()
    catalog = Catalog.open(args.catalog)
    vocab = Vocabulary.load(args.vocabulary)
    meta = {"script": "benchmarks/phrasing_protocol.py", "command": " ".join(["benchmarks/phrasing_protocol.py",
                                                                              *(argv or sys.argv[1:])]),
            "commit": commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(), "catalog": str(args.catalog), "catalog_hash": catalog.content_hash,
            "vocabulary": _rel(vocab.source)}

    log("synthesizing the training pool and the phrasing-held-out candidates ...")
    p = protocol_sets(catalog, vocab, args.seed, args.train_queries, args.candidates, args.per_style,
                      args.check_queries)
    pool, phrasing, protocol = p["pool"], p["phrasing"], p["protocol"]
    args.work.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(args.work / f"train_pool_seed{args.seed}.parquet", index=False)
    with open(args.work / f"phrasing_eval_seed{args.seed}.jsonl", "w", encoding="utf-8") as f:
        for q in phrasing:
            f.write(json.dumps({k: v for k, v in q.items() if not k.startswith("_")}) + "\n")
    log(f"training pool {len(pool)}; phrasing-held-out {len(phrasing)} {protocol['evaluated_per_style']}")
    log(f"labels done; conversion check {protocol['conversion_check']}")

    log("systems ...")
    systems = baseline_systems(catalog, args.cache_dir, args.mpnet)
    for i, mdir in enumerate(args.model):
        systems.append(model_system(f"model {i + 1}: {mdir} (encode_query)", report.load_model(mdir),
                                    args.embeddings[i if len(args.embeddings) > 1 else 0], catalog))

    results, vcheck = {}, {}
    for s in systems:
        t = time.time()
        results[s.name], vcheck[s.name] = score_system(s, p, catalog, vocab)
        res = results[s.name]
        log(f"{s.name}: phrasing {res['phrasing']['overall']['ndcg@10']:.3f}, dev40 "
            f"{res['dev40']['overall']['ndcg@10']:.3f}, vocabulary check "
            f"{vcheck[s.name]['overall']['share']:.3f} ({time.time() - t:.0f}s)")
    out = {"meta": {**meta, "seconds": round(time.time() - t0, 1)}, "protocol": protocol,
           "sets": {k: len(v) for k, v in p["sets"].items()}, "results": results,
           "vocabulary_check": {k: {kk: vv for kk, vv in v.items() if kk != "words"} for k, v in vcheck.items()},
           "phrasing_queries": [{k: q[k] for k in ("qid", "query", "style", "_novel")} for q in phrasing]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    (args.out / f"{args.name}.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out))
    return 0


def _ratio(x: float, ref: float) -> str:
    if not ref:
        return ""
    r = x / ref
    return f"{r:.2f}x {'met' if r >= TARGET else 'not met'}"


def markdown(out: dict) -> str:
    m, p = out["meta"], out["protocol"]
    ref = out["results"].get(REFERENCE, {})
    lines = ["# The phrasing-held-out protocol", "",
             f"`python {m['command']}` at commit {m['commit']}, {m['date']} on {m['cpu']} ({m['seconds']:.0f} s). "
             f"Catalog `{m['catalog']}` ({m['catalog_hash']}); vocabulary `{m['vocabulary']}`.", "",
             f"Vocabulary split (seed {p['seed']}): {p['split']['phrases_train']} phrases train, "
             f"{p['split']['phrases_heldout']} held out, over {p['split']['groups']} groups "
             f"({p['split']['train_phrases_not_catalog_words']} / {p['split']['heldout_phrases_not_catalog_words']} "
             f"that are not catalog words). Training pool: {p['train_pool']['n']} queries from the training half "
             f"({p['train_pool']['styles']}). Held-out candidates: {p['candidates']['n']}; left out: {p['left_out']}; "
             f"scored per style: {p['evaluated_per_style']}. Pool queries equal to a scored one: "
             f"{p['pool_holds_an_eval_query']}. Labels: each reading as a fashion-queries predicate through its "
             f"labels.py; the conversion gives the dev queries' own labels back: "
             f"{p['conversion_check']['dev_round_trip_labels_equal']}, and agrees with the project's reading "
             f"grades on {p['conversion_check']['reading_grades_agree_with_labels_py']:.2%} of (query, product) "
             f"pairs of the 40. Held-out dev queries the vocabulary can build: {p['dev40_buildable']}.", "",
             f"Targets (issue 25): NDCG@10 >= {TARGET}x {REFERENCE} overall, on intent and on synonym queries; "
             "the ratio is printed beside each system.", ""]
    for name, label in (("phrasing", "Phrasing-held-out queries"), ("dev40", "The 40 held-out dev queries"),
                        ("check", "Check queries (benchmarks/check_queries.jsonl)")):
        first = next((r[name] for r in out["results"].values() if name in r), None)
        if first is None:
            continue
        styles = sorted(first.get("per_style", {}))
        lines += [f"## {label} ({first['n_queries']})", "",
                  "| system | NDCG@10 | Recall@100 | MRR | " + " | ".join(f"{s} ({first['per_style'][s]['n_queries']})"
                                                               for s in styles) + " | vs MiniLM: all / intent / synonym |",
                  "|---|---:|---:|---:|" + "---:|" * len(styles) + "---|"]
        for sys_name, r in out["results"].items():
            x = r[name]
            rr = ref.get(name, {})
            ratios = " / ".join(_ratio(v, w) for v, w in (
                (x["overall"]["ndcg@10"], rr.get("overall", {}).get("ndcg@10")),
                (x["per_style"].get("intent", {}).get("ndcg@10", 0), rr.get("per_style", {}).get("intent", {}).get("ndcg@10")),
                (x["per_style"].get("synonym", {}).get("ndcg@10", 0), rr.get("per_style", {}).get("synonym", {}).get("ndcg@10")))
            ) if sys_name != REFERENCE else "(reference)"
            lines.append(f"| {sys_name} | " + " | ".join(f"{x['overall'][k]:.3f}" for k in KEYS) + " | " +
                         " | ".join(f"{x['per_style'][s]['ndcg@10']:.3f}" for s in styles) + f" | {ratios} |")
        lines.append("")
        if name == "dev40":
            groups = sorted(next(iter(out["results"].values()))["dev40_by_vocabulary"]["per_style"])
            lines += ["By whether the vocabulary (after the audit) can build the query, NDCG@10:", "",
                      "| system | " + " | ".join(f"{g} ({next(iter(out['results'].values()))['dev40_by_vocabulary']['per_style'][g]['n_queries']})"
                                               for g in groups) + " |", "|---|" + "---:|" * len(groups)]
            for sys_name, r in out["results"].items():
                lines.append(f"| {sys_name} | " + " | ".join(
                    f"{r['dev40_by_vocabulary']['per_style'][g]['ndcg@10']:.3f}" for g in groups) + " |")
            lines.append("")
    lines += ["## Vocabulary check", "",
              "Each vocabulary word searched alone: the share whose top 10 holds >= 6 products of the aisle "
              "(or attribute value) it names.", "",
              "| system | category words | colour | gender | usage |", "|---|---:|---:|---:|---:|"]
    for sys_name, v in out["vocabulary_check"].items():
        cell = lambda role: (f"{v['per_role'][role]['share']:.3f} ({v['per_role'][role]['landed']}/"
                             f"{v['per_role'][role]['n']})") if role in v["per_role"] else ""
        lines.append(f"| {sys_name} | " + " | ".join(cell(r) for r in ("category", "colour", "gender", "usage")) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
