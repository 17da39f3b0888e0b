"""Reliability of the index (issue 23): concurrent writers, outputs that hold user files or inputs, the
atomic switch of a save (and a kill in the middle), indexes that open from any working dir, a damaged
label map. One test per defect, named after it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashclip.index import base as index_base
from dashclip.index import build_index, open_index, updating
from dashclip.io import DirLocked
from reliability import snapshot

D = 8


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------------------ 1. concurrent writers
def test_concurrent_index_add_loses_no_updates(tmp_path, reliability):
    """4 writers add 5 products each at once (read, slow "embedding", add, save): all 20 are there after."""
    rec = reliability("1. concurrent index add")
    out = tmp_path / "idx"
    build_index(unit(4, 0), [1, 2, 3, 4], out, attributes=pd.DataFrame({"colour": ["a", "b", "a", "b"]}))
    writers, per = 4, 5
    before = snapshot(tmp_path)
    rec.case(writers)                             # writers at once on one index
    errors = []

    def writer(w: int):
        ids = [100 + w * per + i for i in range(per)]
        try:
            with updating(out) as index:
                time.sleep(0.15)                  # the embedding of `index add` happens here
                index.add(ids, unit(per, w + 1), pd.DataFrame({"colour": ["c"] * per}))
                index.save()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    index = open_index(out)
    wanted = {1, 2, 3, 4} | {100 + i for i in range(writers * per)}
    lost = wanted - set(index.ids)
    rec.count_lost(sorted(wanted), index.ids)
    rec.count_writes(before, snapshot(tmp_path), ["idx"])
    assert lost == set() and len(index) == len(wanted)
    # every vector is findable as itself: the saved FAISS index and the id table agree
    got, _ = index.search(unit(per, 1), 1)
    assert [r[0] for r in got] == [100 + i for i in range(per)]
    rec.done()


def test_concurrent_index_add_waits_then_names_the_other_process(tmp_path, reliability):
    """A writer that cannot get the lock in time fails with the holder's pid; nothing is written."""
    # writes outside: the refused writer may write nothing, in the index or next to it
    rec = reliability("1. concurrent index add")
    out = tmp_path / "idx"
    build_index(unit(3, 0), [1, 2, 3], out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dashclip.io import dir_lock\n"
                               "with dir_lock(sys.argv[1], 'index'):\n    print('held', flush=True); time.sleep(30)",
         str(out)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (out / "meta.json").read_bytes()
        tree = snapshot(tmp_path)
        rec.case()
        with pytest.raises(DirLocked, match=rf"index {out} is being written by another process \(pid {holder.pid}\)"):
            with updating(out, timeout=0.3) as index:
                index.remove([1])
                index.save()
        rec.count_writes(tree, snapshot(tmp_path))
        rec.count_lost([1, 2, 3], open_index(out).ids)
        assert (out / "meta.json").read_bytes() == before and len(open_index(out)) == 3
    finally:
        holder.kill()
        holder.wait()
    with updating(out, timeout=5) as index:  # the lock died with its holder
        index.remove([1])
        index.save()
    rec.count_lost([2, 3], open_index(out).ids)
    assert len(open_index(out)) == 2
    rec.done()


# ------------------------------------------------------------------------------ 2. build --out
def test_index_build_out_existing_dir_keeps_user_files(tmp_path, reliability):
    # lost: the user's files deleted or changed, and products missing from the indexes built;
    # writes outside: a refused --out is not an output, so a refusal may write nothing at all
    rec = reliability("3. --out deletes (index build)")
    vectors, ids = unit(5, 0), [1, 2, 3, 4, 5]
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "sub" / "data.csv").write_text("1,2\n")
    before = snapshot(mine)
    rec.case()
    with pytest.raises(ValueError, match=r"mine: is a non-empty folder that is not a dashclip index output \(sub, thesis.txt\).*--overwrite"):
        build_index(vectors, ids, mine)
    rec.count_files_lost(before, snapshot(mine))
    rec.count_writes(before, snapshot(mine))
    assert snapshot(mine) == before and (mine / "thesis.txt").read_text() == "years of work"

    # an output may not be, or contain, an input (catalog, embeddings, model dirs)
    catalog, emb = tmp_path / "catalog", tmp_path / "work" / "emb"
    catalog.mkdir()
    (catalog / "catalog.parquet").write_bytes(b"PAR1")
    emb.mkdir(parents=True)
    before = snapshot(tmp_path)
    for out, meta in [(catalog, {"catalog_dir": str(catalog)}), (tmp_path / "work", {"embeddings_dir": str(emb)}),
                      (tmp_path, {"catalog_dir": str(catalog)})]:
        rec.case()
        with pytest.raises(ValueError, match="(is|holds) the input"):
            build_index(vectors, ids, out, meta=meta, overwrite=True)
    assert (catalog / "catalog.parquet").read_bytes() == b"PAR1" and emb.is_dir()
    rec.case()
    with pytest.raises(ValueError, match="holds the input"):
        build_index(vectors, ids, tmp_path / "work", inputs=[emb])
    after = snapshot(tmp_path)
    rec.count_files_lost(before, after)
    rec.count_writes(before, after)

    # a missing dir, an empty dir, an index dir: fine; user files next to an index survive a rebuild
    outputs = ["new", "empty", "mine"]
    before = snapshot(tmp_path)
    rec.count_lost(ids, build_index(vectors, ids, tmp_path / "new").ids, "new")
    (tmp_path / "empty").mkdir()
    rec.count_lost(ids, build_index(vectors, ids, tmp_path / "empty").ids, "empty")
    (tmp_path / "new" / "NOTES.md").write_text("mine")
    rec.case()                                      # a user file next to an index it rebuilds
    rec.count_lost(ids, build_index(vectors[::-1].copy(), ids, tmp_path / "new").ids, "rebuild")
    notes = tmp_path / "new" / "NOTES.md"
    rec.count_lost(1, int(notes.is_file() and notes.read_text() == "mine"), "user file in an index dir")
    assert (tmp_path / "new" / "NOTES.md").read_text() == "mine"
    # --overwrite: the user asked for the contents to go
    assert len(build_index(vectors, ids, mine, overwrite=True)) == 5 and not (mine / "thesis.txt").exists()
    rec.count_writes(before, snapshot(tmp_path), outputs)
    rec.done()


def test_index_build_cli_refuses_non_index_out_before_embedding(tmp_path, monkeypatch, reliability):
    """`dashclip index build --out DIR`: a user dir is refused before the model embeds anything."""
    rec = reliability("3. --out deletes (index build)")
    from test_index_cli import invoke, make_catalog

    catalog = make_catalog(tmp_path / "catalog")
    model = tmp_path / "model"          # never loaded: --out is refused first
    model.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    import dashclip.index.catalog_index as catalog_index
    import dashclip.index.cli as index_cli
    for home, slow in ((index_cli, "_load_model"), (catalog_index, "catalog_embeddings")):
        monkeypatch.setattr(home, slow, lambda *a, **k: pytest.fail("work done before checking --out"))
    before = snapshot(tmp_path)
    rec.case()
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", mine, "-q")
    assert code == 2 and "non-empty folder that is not a dashclip index output" in output and "--overwrite" in output
    rec.case()
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", catalog, "-q")
    assert code == 2 and "is the input" in output
    after = snapshot(tmp_path)
    rec.count_files_lost(before, after)
    rec.count_writes(before, after)
    assert (mine / "keep.txt").read_text() == "x" and not (tmp_path / "mine-embeddings").exists()
    rec.done()


# ------------------------------------------------------------------------------ 3. atomic switch
class Killed(BaseException):
    """A kill -9 at a chosen point: no clean-up handler runs."""


def test_index_swap_is_atomic_when_killed(tmp_path, monkeypatch, reliability):
    rec = reliability("6. index swap")
    out = tmp_path / "idx"
    old_v, new_v = unit(6, 0), unit(6, 1)
    build_index(old_v, list(range(6)), out)
    want_old = open_index(out).search(old_v, 1)[0]
    before = snapshot(tmp_path)

    def kill(*args, **kwargs):
        raise Killed()

    # killed after the new data was written, before the switch: the old index, whole
    monkeypatch.setattr(index_base, "_switch", kill)
    monkeypatch.setattr(index_base, "_discard", lambda directory: None)  # a killed process cleans nothing
    rec.case()
    with pytest.raises(Killed):
        build_index(new_v, list(range(6)), out)
    monkeypatch.undo()
    rec.count_lost(range(6), open_index(out).ids, "killed before the switch")
    data_dirs = sorted(p.name for p in out.iterdir() if p.name.startswith("data."))
    assert len(data_dirs) == 2                                     # the live one + the killed writer's
    assert open_index(out).search(old_v, 1)[0] == want_old
    assert (out / "meta.json").exists() and open_index(out).meta["data"] in data_dirs

    # killed after the switch, before the clean-up: the new index, whole
    monkeypatch.setattr(index_base, "clean_index_dir", kill)
    rec.case()
    with pytest.raises(Killed):
        build_index(new_v, list(range(6)), out)
    monkeypatch.undo()
    reopened = open_index(out)
    rec.count_lost(range(6), reopened.ids, "killed after the switch")
    got = reopened.search(new_v, 1)[0]
    assert got == [[i] for i in range(6)]

    # the next save cleans every leftover: only the live data dir and the one before it stay
    reopened.remove([5])
    reopened.save()
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(("data.", ".")))
    assert len([n for n in left if n.startswith("data.")]) == 2 and reopened.meta["data"] in left
    rec.count_writes(before, snapshot(tmp_path), ["idx"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden next to the index
    rec.count_lost(range(5), open_index(out).ids, "next save")
    assert len(open_index(out)) == 5
    rec.done()


def test_index_swap_readers_never_see_a_missing_index(tmp_path, reliability):
    """A reader opening the index over and over while a writer saves 15 times never fails."""
    rec = reliability("6. index swap")
    out = tmp_path / "idx"
    build_index(unit(50, 0), list(range(50)), out)
    before = snapshot(tmp_path)
    stop, failures, opened = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                n = len(open_index(out))
                assert n in (50, 51)
                opened[0] += 1
            except Exception as e:  # pragma: no cover - reported below
                failures.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(15):
            rec.case()                            # a save while a reader opens the index
            with updating(out) as index:
                if index.has(1000):
                    index.remove([1000])
                else:
                    index.add([1000], unit(1, i))
                index.save()
    finally:
        stop.set()
        t.join()
    rec.count_lost(range(50), open_index(out).ids)
    rec.count_writes(before, snapshot(tmp_path), ["idx"])
    assert failures == [] and opened[0] > 0
    rec.done()


def test_index_swap_opens_a_flat_dir_of_format_1(tmp_path, reliability):
    """An index dir written before versioned data dirs (files next to meta.json) opens, and updates."""
    rec = reliability("6. index swap")
    out = tmp_path / "idx"
    vectors = unit(4, 0)
    build_index(vectors, [1, 2, 3, 4], out)
    meta = json.loads((out / "meta.json").read_text())
    for f in (out / meta["data"]).iterdir():
        f.rename(out / f.name)
    (out / meta["data"]).rmdir()
    for key in ("data", "kind"):
        meta.pop(key)
    meta["format_version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    before = snapshot(tmp_path)
    rec.case()                                    # an index of format 1, opened and updated twice
    rec.count_lost([1, 2, 3, 4], open_index(out).ids, "opened")
    assert open_index(out).search(vectors, 1)[0] == [[1], [2], [3], [4]]
    with updating(out) as index:
        index.remove([4])
        index.save()
    rec.count_lost([1, 2, 3], open_index(out).ids, "first save")
    assert len(open_index(out)) == 3 and (out / "index.faiss").exists()  # kept one save, for readers
    with updating(out) as index:
        index.remove([3])
        index.save()
    rec.count_lost([1, 2], open_index(out).ids, "second save")
    rec.count_writes(before, snapshot(tmp_path), ["idx"])
    assert len(open_index(out)) == 2 and not (out / "index.faiss").exists() and not (out / "ids.parquet").exists()
    rec.done()


# ------------------------------------------------------------------------------ 4. working dir
def test_index_opens_from_another_working_dir(tmp_path, monkeypatch, reliability):
    """Built with relative paths in one working dir; its catalog is found from any other."""
    from dashclip.serving.search import resolve_catalog_dir

    rec = reliability("7. cwd-relative index")
    work = tmp_path / "work"
    (work / "data" / "catalog").mkdir(parents=True)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    build_index(unit(3, 0), [1, 2, 3], Path("runs/index"),
                meta={"catalog_dir": "data/catalog", "embeddings_dir": "data/emb"})
    rec.count_writes(before, snapshot(tmp_path), ["work/runs/index"])
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    before = snapshot(tmp_path)
    rec.case()                                    # opened from a deeper dir elsewhere
    monkeypatch.chdir(elsewhere)
    index_dir = work / "runs" / "index"
    meta = open_index(index_dir).meta
    assert not Path(meta["catalog_dir"]).is_absolute()             # relative to the index dir: it can move
    assert resolve_catalog_dir(meta, None, index_dir).resolve() == (work / "data" / "catalog").resolve()
    rec.case()                                    # named by a path relative to another working dir
    monkeypatch.chdir(tmp_path)
    assert resolve_catalog_dir(meta, None, Path("work/runs/index")).resolve() == (work / "data" / "catalog").resolve()
    rec.count_writes(before, snapshot(tmp_path))
    # the index and its catalog moved together: still found
    rec.case()
    (tmp_path / "moved").mkdir()
    work.rename(tmp_path / "moved" / "work")
    moved = tmp_path / "moved" / "work" / "runs" / "index"
    rec.count_lost([1, 2, 3], open_index(moved).ids)
    assert resolve_catalog_dir(open_index(moved).meta, None, moved).is_dir()
    rec.done()


def test_index_opens_from_another_working_dir_search_cli(tmp_path_factory, tmp_path, monkeypatch, reliability):
    """`dashclip search` from another working dir than `index build`'s."""
    from typer.testing import CliRunner

    from dashclip.cli import app
    from test_search_fixtures import build_shop_index, shared_shop

    rec = reliability("7. cwd-relative index")
    shop = shared_shop(tmp_path_factory)
    monkeypatch.chdir(shop.root)
    shop_before, before = snapshot(shop.root), snapshot(tmp_path)
    build_shop_index(shop.model, type(shop.catalog).open(Path(os.path.relpath(shop.catalog_dir, shop.root))),
                     tmp_path / "index")
    rec.count_lost(shop.catalog.products["id"].tolist(), open_index(tmp_path / "index").ids)
    assert not Path(open_index(tmp_path / "index").meta["catalog_dir"]).is_absolute()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    rec.case()                                    # search from another working dir
    result = CliRunner().invoke(app, ["search", "red dress", "--model", str(shop.model_dir), "--index",
                                      str(tmp_path / "index"), "-k", "3"], terminal_width=200)
    rec.count_writes(shop_before, snapshot(shop.root))
    rec.count_writes(before, snapshot(tmp_path), ["index", "index-embeddings"])
    rec.count_writes({}, snapshot(elsewhere))
    assert result.exit_code == 0, result.output
    assert "3 results" in result.output
    rec.done()


# ------------------------------------------------------------------------------ 7. label map
def test_corrupt_label_map_is_a_clear_error_not_an_index_error(tmp_path, reliability):
    # writes outside: a search names no output, so it may write nothing at all
    rec = reliability("10. corrupt label map")
    out = tmp_path / "idx"
    attrs = pd.DataFrame({"colour": ["red", "blue", "red", "blue"]})
    build_index(unit(4, 0), [1, 2, 3, 4], out, attributes=attrs)
    ids_file = out / open_index(out).meta["data"] / "ids.parquet"
    good = pd.read_parquet(ids_file)
    for bad_labels in ([0, 1, 2, 9999], [0, 1, 1, 3], [0, 1, 2, -5]):
        good.assign(label=bad_labels).to_parquet(ids_file, index=False)
        before = snapshot(tmp_path)
        rec.case()
        with pytest.raises(ValueError, match=r"ids.parquet: the label map is corrupt"):
            open_index(out).search(unit(1, 3), 2, filters={"colour": ["red"]})
        rec.count_writes(before, snapshot(tmp_path))
    good.to_parquet(ids_file, index=False)
    rec.count_lost([1, 2, 3, 4], open_index(out).ids)
    assert open_index(out).search(unit(1, 3), 2, filters={"colour": ["red"]})[0][0] in ([1, 3], [3, 1])
    rec.done()
