"""How much of the fashion dev queries the shop vocabulary already holds, and the phrases taken from them.

For each of the 120 queries of ../shared/data/fashion-queries/dev_queries.jsonl:

    verbatim     the query is a vocabulary phrase (case and spacing ignored)
    buildable    its content tokens (`phrasing.content_tokens`: no stop words, no "something", no words that
                 only say who it is for) split entirely into vocabulary phrases (`phrasing.buildable`);
                 counted twice: from the vocabulary alone, and with the catalog's own words too (category and
                 attribute values, the built-in gender/usage words), which every synthesized pool uses
    near_need    (intent queries) the content-token Jaccard with the closest "needs" phrase is >= 0.5
                 (also counted at >= 2/3)
    taken        vocabulary phrases taken from it (`phrasing.taken_from`: the query verbatim, or for a
                 phrase of 2+ content tokens the query without stop/recipient words; never a catalog word)

Counts for all 120 and the 40 held out (qid number divisible by 3), per style.

    python benchmarks/vocabulary_audit.py [--catalog runs/catalogs/fashion] [--apply | --vocabulary-commit REV]

--apply removes every taken phrase from src/dashclip/labeling/vocabularies/fashion.json (a text edit, so the
file keeps its layout; checked against `phrasing.remove_phrases`) and audits again; --vocabulary-commit
audits the file as it was at a commit (the one before the removal: 89eb9c6) and checks that the file now
is its "after". Writes
benchmarks/results/vocabulary_audit.md and .json (before, removed, after).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
VOCAB = REPO / "src" / "dashclip" / "labeling" / "vocabularies" / "fashion.json"
RESULTS = REPO / "benchmarks" / "results"
STYLES = ("keyword", "intent", "synonym", "misspelling", "long")
FLAGS = ("verbatim", "buildable_vocab", "buildable_with_catalog_words", "near_need", "near_need_2_3", "taken")


from _machine import commit  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def catalog_words(catalog_dir: Path) -> set[str]:
    from dashclip.data.catalog import Catalog
    from dashclip.labeling.phrasing import own_phrases

    products = Catalog.open(catalog_dir).products
    return own_phrases({c: products[c].dropna().astype(str).unique().tolist()
                        for c in ("category", "gender", "baseColour", "usage") if c in products})


def audit(data: dict, queries: list[dict], own: set[str]) -> dict:
    from dashclip.labeling.phrasing import buildable, content_tokens, taken_from, vocabulary_phrases
    from dashclip.text import query_key
    from dashclip.settings import is_heldout_qid

    phrases = vocabulary_phrases(data)
    texts = sorted({p["phrase"] for p in phrases})
    norm = {query_key(t) for t in texts}
    needs = sorted({p["phrase"] for p in phrases if p["kind"] == "need"})
    rows = []
    for q in queries:
        ct = set(content_tokens(q["query"]))
        best, jac = None, 0.0
        if q["style"] == "intent":
            for n in needs:
                nt = set(content_tokens(n))
                j = len(ct & nt) / len(ct | nt) if ct | nt else 0.0
                if j > jac:
                    best, jac = n, j
        taken = [p for p in phrases if taken_from(p["phrase"], q["query"], own)]
        rows.append({"qid": q["qid"], "query": q["query"], "style": q["style"], "heldout": is_heldout_qid(q["qid"]),
                     "verbatim": query_key(q["query"]) in norm,
                     "buildable_vocab": buildable(q["query"], texts),
                     "buildable_with_catalog_words": buildable(q["query"], texts + sorted(own)),
                     "near_need": jac >= 0.5, "near_need_2_3": jac >= 2 / 3 - 1e-9,
                     "closest_need": best, "need_jaccard": round(jac, 3),
                     "taken": sorted({p["phrase"] for p in taken}),
                     "taken_groups": sorted({p["group"] for p in taken})})
    counts = {}
    for split, keep in (("all", lambda r: True), ("heldout", lambda r: r["heldout"])):
        sel = [r for r in rows if keep(r)]
        counts[split] = {"n": len(sel), **{f: sum(bool(r[f]) for r in sel) for f in FLAGS},
                         "per_style": {s: {"n": sum(r["style"] == s for r in sel),
                                           **{f: sum(bool(r[f]) for r in sel if r["style"] == s) for f in FLAGS}}
                                       for s in STYLES}}
    return {"phrases": len(phrases), "distinct_phrases": len(texts), "counts": counts, "queries": rows}


def remove_in_text(text: str, phrase: str) -> str:
    """Remove every list item "phrase" from the JSON text, keeping the layout."""
    q = re.escape(json.dumps(phrase))
    text = re.sub(rf'(?<=\[){q}, ?', "", text)           # first item
    text = re.sub(rf',\s*{q}(?=\s*[,\]])', "", text)      # a later item
    text = re.sub(rf'(?<=\[){q}(?=\])', "", text)          # the only item
    return text


def markdown(out: dict) -> str:
    m = out["meta"]
    lines = ["# Vocabulary overlap audit: the fashion vocabulary vs the 120 dev queries", "",
             f"`python {m['command']}` at commit {m['commit']}, {m['date']} on {m['cpu']}. Vocabulary: "
             f"`{m['vocabulary']}`; queries: `{m['queries']}`."
             + (f" The file as committed now is this vocabulary after the removal: "
                f"{m['shipped_vocabulary_is_after']}." if "shipped_vocabulary_is_after" in m else ""), "",
             "Definitions (benchmarks/vocabulary_audit.py, `dashclip.labeling.phrasing`): *verbatim*: the query is a "
             "vocabulary phrase. *buildable*: its content tokens (lowercase, plural-stemmed, without NLTK stop words, "
             "\"something\" and words that only say who it is for: men, ladies, my husband, ...) split entirely into "
             "vocabulary phrases; *+catalog words* also allows the catalog's own category/attribute values and the "
             "built-in gender/usage words that every synthesized pool uses. *near need*: an intent query whose "
             "content-token Jaccard with the closest \"needs\" phrase is >= 0.5 (>= 2/3 in brackets). *taken*: a "
             "vocabulary phrase equal to the query verbatim, or (2+ content tokens) equal to it without stop and "
             "recipient words; one-word synonyms count only when they are a whole query; catalog words never.", ""]
    for label in ("before", "after"):
        a = out.get(label)
        if not a:
            continue
        lines += [f"## {label.capitalize()} the removal ({a['distinct_phrases']} distinct phrases)", "",
                  "| queries | n | verbatim | buildable (vocab) | buildable (+catalog words) | intent near a need | "
                  "with a taken phrase |", "|---|---:|---:|---:|---:|---:|---:|"]
        for split in ("all", "heldout"):
            c = a["counts"][split]
            lines.append(f"| {split} | {c['n']} | {c['verbatim']} | {c['buildable_vocab']} | "
                         f"{c['buildable_with_catalog_words']} | {c['near_need']} ({c['near_need_2_3']}) | {c['taken']} |")
            for s in STYLES:
                p = c["per_style"][s]
                lines.append(f"| {split}: {s} | {p['n']} | {p['verbatim']} | {p['buildable_vocab']} | "
                             f"{p['buildable_with_catalog_words']} | {p['near_need']} ({p['near_need_2_3']}) | {p['taken']} |")
        lines.append("")
    if out.get("removed"):
        lines += [f"## Removed phrases ({len(out['removed'])})", "", "| phrase | from group(s) | dev query it matched |",
                  "|---|---|---|"]
        for r in out["removed"]:
            lines.append(f"| {r['phrase']} | {', '.join(r['groups'])} | {r['qid']} \"{r['query']}\" |")
        lines.append("")
    a = out.get("after") or out["before"]
    lines += ["## Per query (" + ("after" if out.get("after") else "before") + " the removal)", "",
              "| qid | style | held out | query | verbatim | buildable | +catalog | near need (Jaccard) |",
              "|---|---|---|---|---|---|---|---|"]
    yes = lambda b: "yes" if b else ""
    for r in a["queries"]:
        near = f"{r['closest_need']} ({r['need_jaccard']})" if r["closest_need"] else ""
        lines.append(f"| {r['qid']} | {r['style']} | {yes(r['heldout'])} | {r['query']} | {yes(r['verbatim'])} | "
                     f"{yes(r['buildable_vocab'])} | {yes(r['buildable_with_catalog_words'])} | {near} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from _machine import cpu_model
    from dashclip.settings import dataset_dir, runs_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=runs_dir() / "catalogs" / "fashion")
    ap.add_argument("--vocabulary", type=Path, default=VOCAB)
    ap.add_argument("--vocabulary-commit", metavar="REV", help="audit the vocabulary file as it was at a git "
                    "commit (e.g. before the removal), read with `git show REV:path`")
    ap.add_argument("--apply", action="store_true", help="remove the taken phrases from the vocabulary file")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from dashclip.labeling.phrasing import remove_phrases

    qpath = dataset_dir("fashion-queries") / "dev_queries.jsonl"
    queries = [json.loads(line) for line in open(qpath, encoding="utf-8") if line.strip()]
    own = catalog_words(args.catalog)
    if args.vocabulary_commit:
        if args.apply:
            ap.error("--apply edits the file on disk; it does not go with --vocabulary-commit")
        rel = args.vocabulary.resolve().relative_to(REPO)
        text = subprocess.run(["git", "show", f"{args.vocabulary_commit}:{rel}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
    else:
        text = args.vocabulary.read_text(encoding="utf-8")
    data = json.loads(text)
    out = {"meta": {"command": " ".join(["benchmarks/vocabulary_audit.py", *(argv or sys.argv[1:])]),
                    "commit": commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "cpu": cpu_model(), "queries": str(qpath),
                    "vocabulary": str(args.vocabulary.resolve().relative_to(REPO)) +
                    (f" at commit {args.vocabulary_commit}" if args.vocabulary_commit else ""),
                    "catalog_words": len(own)},
           "before": audit(data, queries, own)}
    removed = {}
    for r in out["before"]["queries"]:
        for p in r["taken"]:
            removed.setdefault(p, {"phrase": p, "groups": [], "qid": r["qid"], "query": r["query"]})
        for g in r["taken_groups"]:
            for p in r["taken"]:
                if g not in removed[p]["groups"]:
                    removed[p]["groups"].append(g)
    out["removed"] = list(removed.values())
    if args.apply and removed:
        new_text = text
        for p in removed:
            new_text = remove_in_text(new_text, p)
        new = json.loads(new_text)
        expected = remove_phrases(data, list(removed))
        for k in ("category", "attributes", "adjectives", "needs"):
            if new.get(k) != expected.get(k):
                raise SystemExit(f"the text edit of {k!r} differs from phrasing.remove_phrases; not written")
        args.vocabulary.write_text(new_text, encoding="utf-8")
        data = new
    if removed:
        after = remove_phrases(data, list(removed))
        out["after"] = audit(after, queries, own)
        if args.vocabulary_commit:     # an earlier version: is the file on disk its "after"?
            shipped = json.loads(args.vocabulary.read_text(encoding="utf-8"))
            out["meta"]["shipped_vocabulary_is_after"] = all(
                shipped.get(k) == after.get(k) for k in ("category", "attributes", "adjectives", "needs"))
    (args.out / "vocabulary_audit.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    (args.out / "vocabulary_audit.md").write_text(markdown(out), encoding="utf-8")
    for label in ("before", "after"):
        if label in out:
            c = out[label]["counts"]
            print(label, {s: {k: v for k, v in c[s].items() if k != "per_style"} for s in c})
    print(f"removed {len(removed)}: {', '.join(removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
