"""Query speller benchmark: how many real queries it changes (false corrections) and how many
misspellings it fixes, for the speller of a base commit ("before") and of this checkout ("after").

The speller is built as Stage 2 builds it (`training/align.py: build_query_speller`): the words of a
catalog, the words used by 3+ of the training queries, the tokenizer's whole words as known words.
- fashion: the fashion catalog (../shared/data/fashion-product-images-small, title + category +
  attributes as `product_text` makes them) and 2,200 synthesized training queries (the demo's pool
  size, fashion vocabulary, seed 0, the dev queries excluded). Measured on the 120 fashion dev
  queries: the 12 of style "misspelling" against the words they were meant to be (INTENDED below),
  the other 108 for false corrections.
- Home Depot: its catalog (products.csv titles) and its training queries (train_grades.csv); measured
  on the 2,327 dev queries (dev_grades.csv), which are real and unedited.
- WANDS: no WANDS catalog is here (only its 480 queries), so the Home Depot speller, the nearest shop
  (home goods), is used on WANDS's 480 real queries.
- synthetic typos: 1,000 fashion catalog words (5+ letters, used 5+ times), one edit each
  (`labeling.queries.make_typo`: a dropped, doubled or swapped letter), seed 0.

Every changed real query is listed in the results so a reader can judge which were misspellings.
Writes benchmarks/results/speller.md and .json, stamped with date, commit and machine.
Usage: python benchmarks/speller.py [--before 44d8592]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

from dashclip.data.catalog import Catalog  # noqa: E402
from dashclip.io import write_json, write_text  # noqa: E402
from dashclip.labeling.queries import make_typo, synthesize_queries  # noqa: E402
from dashclip.models import speller as speller_after  # noqa: E402
from dashclip.settings import dataset_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FASHION_ATTRS = ["subCategory", "masterCategory", "gender", "baseColour", "usage", "season"]
# What each fashion dev misspelling query was meant to say (by hand, from its text and its types).
INTENDED = {"tshrt": "tshirt", "sunglases for women": "sunglasses for women", "leggins": "leggings",
            "kurtha": "kurta", "jaket": "jacket", "earings": "earrings", "hand bag": "handbag",
            "shrit for men": "shirt for men", "brassier": "brassiere", "formal shooes": "formal shoes",
            "sweatshrt": "sweatshirt", "scarfs for women": "scarves for women"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def speller_module_at(commit: str):
    """models/speller.py as it was at `commit`, imported beside today's (its relative imports resolve)."""
    source = git("show", f"{commit}:src/dashclip/models/speller.py")
    spec = importlib.util.spec_from_loader(f"dashclip.models._speller_{commit}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "dashclip.models"
    exec(compile(source, f"{commit}:speller.py", "exec"), module.__dict__)
    return module


def fashion_catalog(tmp: Path) -> Catalog:
    """The fashion catalog as the preset imports it (text columns only: no image is read here)."""
    raw = pd.read_csv(dataset_dir("fashion-product-images-small") / "catalog.csv")
    df = pd.DataFrame({"id": raw["id"], "title": raw["productDisplayName"].fillna(""), "text": "",
                       "category": raw["articleType"], "image": raw["id"].astype(str) + ".jpg"})
    for a in FASHION_ATTRS:
        df[a] = raw[a]
    df = df.sort_values("id").reset_index(drop=True)
    df.to_parquet(tmp / "catalog.parquet")
    pd.DataFrame({"product_id": df["id"], "image": df["image"], "role": "primary", "split": None}).to_parquet(
        tmp / "images.parquet")
    (tmp / "manifest.json").write_text(json.dumps({"name": "fashion", "preset": "fashion-product-images-small",
                                                   "attributes": FASHION_ATTRS, "content_hash": "bench"}))
    return Catalog.open(tmp)


def changed(speller, queries: list[str]) -> list[tuple[str, str]]:
    out = []
    for q in queries:
        norm = " ".join(q.lower().split())
        c = " ".join(speller.correct(norm).split())
        if c != norm:
            out.append((norm, c))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="44d8592", help="commit whose speller is 'before'")
    ap.add_argument("--typos", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.time()
    modules = {"before": speller_module_at(args.before), "after": speller_after}

    import dashclip
    known = speller_after.tokenizer_words(dashclip.create_model("default", pretrained=False).tokenizer)

    # Fashion: catalog words + the synthesized training pool.
    dev = [json.loads(line) for line in
           (dataset_dir("fashion-queries") / "dev_queries.jsonl").read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = fashion_catalog(Path(tmp))
        pool = synthesize_queries(catalog, n=2200, seed=0, vocabulary="fashion", exclude=[q["query"] for q in dev])
        fashion_texts = catalog.product_texts()
    # Home Depot: titles + its training queries.
    hd = dataset_dir("homedepot-search")
    hd_texts = pd.read_csv(hd / "products.csv")["title"].astype(str).tolist()
    hd_train = pd.read_csv(hd / "train_grades.csv")["query"].astype(str).unique().tolist()
    hd_dev = pd.read_csv(hd / "dev_grades.csv")["query"].astype(str).unique().tolist()
    wands = pd.read_csv(dataset_dir("wands-queries") / "query.csv", sep="\t")["query"].astype(str).tolist()

    # Synthetic one-edit typos of fashion catalog words.
    counts = Counter(w for t in fashion_texts for w in str(t).lower().split() if w.isalpha() and len(w) >= 5)
    pool_words = sorted(w for w, n in counts.items() if n >= 5)
    rng = np.random.default_rng(0)
    typos = []
    for w in rng.choice(pool_words, size=min(args.typos, len(pool_words)), replace=False):
        t = make_typo(str(w), rng)
        if t and t != w:
            typos.append((t, str(w)))

    t1 = time.time()
    speller_after.english_lexicon()
    lexicon_s = time.time() - t1
    results = {}
    for name, mod in modules.items():
        t1 = time.time()
        fashion = mod.QuerySpeller.build(fashion_texts, pool["query"].tolist(), known=known)
        home = mod.QuerySpeller.build(hd_texts, hd_train, known=known)
        build_s = time.time() - t1
        miss = [q for q in dev if q["style"] == "misspelling"]
        fixed = [(q["query"], fashion.correct(q["query"])) for q in miss]
        other = [q["query"] for q in dev if q["style"] != "misspelling"]
        t2 = time.time()
        typo_out = [(t, w, fashion.correct(t)) for t, w in typos]
        t3 = time.perf_counter()
        for q in hd_dev:
            home.correct(q)
        ms_per_query = (time.perf_counter() - t3) * 1000 / len(hd_dev)
        r = {
            "fashion_misspellings": {"n": len(miss), "fixed": sum(c == INTENDED[q] for q, c in fixed),
                                     "changed": sum(c != q for q, c in fixed),
                                     "rows": [{"query": q, "corrected": c, "intended": INTENDED[q]} for q, c in fixed]},
            "fashion_other_dev": {"n": len(other), "changed": changed(fashion, other)},
            "homedepot_dev": {"n": len(hd_dev), "changed": changed(home, hd_dev)},
            "wands": {"n": len(wands), "changed": changed(home, wands)},
            "synthetic_typos": {"n": len(typo_out), "fixed": sum(c == w for _, w, c in typo_out),
                                "left_as_typed": sum(c == t for t, _, c in typo_out),
                                "wrong_word": sum(c not in (w, t) for t, w, c in typo_out),
                                "wrong_examples": [(t, w, c) for t, w, c in typo_out if c not in (w, t)][:20]},
            "seconds": {"build_both": round(build_s, 1), "typos": round(time.time() - t2, 2)},
            "ms_per_query_homedepot_dev": round(ms_per_query, 4),
        }
        results[name] = r
        print(name, {k: (v.get("fixed"), len(v["changed"]) if isinstance(v.get("changed"), list) else v.get("changed"))
                     for k, v in r.items() if isinstance(v, dict) and "n" in v}, flush=True)

    commit = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--", "src") else "")
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "before_commit": args.before, "machine": _machine.cpu_model(),
              "vocabularies": {"fashion": f"{len(fashion_texts)} catalog texts + {len(pool)} synthesized queries",
                               "homedepot": f"{len(hd_texts)} titles + {len(hd_train)} train queries",
                               "wands": "the Home Depot speller (no WANDS catalog here)"},
              "results": results, "lexicon_load_s": round(lexicon_s, 3), "seconds": round(time.time() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "speller.json", record)
    write_text(RESULTS / "speller.md", markdown(record))
    print(f"wrote {RESULTS / 'speller.md'} in {record['seconds']} s")


def markdown(rec: dict) -> str:
    b, a = rec["results"]["before"], rec["results"]["after"]
    lines = [f"# Query speller: false corrections and fixed misspellings",
             "", f"{rec['date']}, commit {rec['commit']} (before: speller of {rec['before_commit']}), "
                 f"{rec['machine']}. Made by `benchmarks/speller.py`.", "",
             "Spellers built as Stage 2 builds them: " + "; ".join(f"{k}: {v}" for k, v in rec["vocabularies"].items())
             + ".", "",
             "| measure | before | after |", "|---|---:|---:|"]
    for key, label in (("homedepot_dev", "Home Depot dev queries changed"), ("wands", "WANDS queries changed"),
                       ("fashion_other_dev", "fashion dev queries (not misspellings) changed")):
        lines.append(f"| {label} (of {a[key]['n']}) | {len(b[key]['changed'])} | {len(a[key]['changed'])} |")
    lines.append(f"| fashion dev misspellings corrected to the intended words (of {a['fashion_misspellings']['n']}) "
                 f"| {b['fashion_misspellings']['fixed']} | {a['fashion_misspellings']['fixed']} |")
    for key, label in (("fixed", "fixed"), ("left_as_typed", "left as typed"), ("wrong_word", "changed to a wrong word")):
        lines.append(f"| synthetic one-edit typos of catalog words (of {a['synthetic_typos']['n']}): {label} "
                     f"| {b['synthetic_typos'][key]} | {a['synthetic_typos'][key]} |")
    lines.append(f"| mean time per query, Home Depot dev (ms) | {b['ms_per_query_homedepot_dev']} "
                 f"| {a['ms_per_query_homedepot_dev']} |")
    lines += ["", f"The English lexicon loads once per process, on the first word no shop list knows: "
                  f"{rec['lexicon_load_s']} s here.", ""]
    for key, label in (("homedepot_dev", "Home Depot"), ("wands", "WANDS")):
        before, after = dict(map(tuple, b[key]["changed"])), dict(map(tuple, a[key]["changed"]))
        kept = [q for q in before if q not in after]
        other = [q for q in after if q in before and after[q] != before[q]]
        new = [q for q in after if q not in before]
        lines += [f"{label}: {len(kept)} queries changed before are now left as typed, {len(new)} are changed "
                  f"now and were not before, {len(other)} are changed differently. Now left as typed:", ""]
        lines += [f"- {q} (before: {before[q]})" for q in kept] + [""]
        if new or other:
            lines += ["Changed now, not before or differently:", ""]
            lines += [f"- {q} -> {after[q]} (before: {before.get(q, q)})" for q in new + other] + [""]
    lines += ["## Fashion dev misspellings", "", "| query | intended | before | after |", "|---|---|---|---|"]
    for rb, ra in zip(b["fashion_misspellings"]["rows"], a["fashion_misspellings"]["rows"]):
        lines.append(f"| {rb['query']} | {rb['intended']} | {rb['corrected']} | {ra['corrected']} |")
    for key, label in (("homedepot_dev", "Home Depot dev queries"), ("wands", "WANDS queries"),
                       ("fashion_other_dev", "Fashion dev queries (not misspellings)")):
        for side, r in (("before", b), ("after", a)):
            rows = r[key]["changed"]
            lines += ["", f"## {label} changed, {side} ({len(rows)})", ""]
            lines += [f"- {q} -> {c}" for q, c in rows] or ["(none)"]
    for side, r in (("before", b), ("after", a)):
        ex = r["synthetic_typos"]["wrong_examples"]
        lines += ["", f"## Synthetic typos changed to a wrong word, {side} (first {len(ex)})", ""]
        lines += [f"- {t} (from {w}) -> {c}" for t, w, c in ex] or ["(none)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
