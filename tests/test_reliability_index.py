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

D = 8


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def tree(root: Path) -> set[str]:
    """Every path under `root`, relative (to compare a dir before and after)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------ 1. concurrent writers
def test_concurrent_index_add_loses_no_updates(tmp_path):
    """4 writers add 5 products each at once (read, slow "embedding", add, save): all 20 are there after."""
    out = tmp_path / "idx"
    build_index(unit(4, 0), [1, 2, 3, 4], out, attributes=pd.DataFrame({"colour": ["a", "b", "a", "b"]}))
    writers, per = 4, 5
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
    assert lost == set() and len(index) == len(wanted)
    # every vector is findable as itself: the saved FAISS index and the id table agree
    got, _ = index.search(unit(per, 1), 1)
    assert [r[0] for r in got] == [100 + i for i in range(per)]


def test_concurrent_index_add_waits_then_names_the_other_process(tmp_path):
    """A writer that cannot get the lock in time fails with the holder's pid; nothing is written."""
    out = tmp_path / "idx"
    build_index(unit(3, 0), [1, 2, 3], out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dashclip.io import dir_lock\n"
                               "with dir_lock(sys.argv[1], 'index'):\n    print('held', flush=True); time.sleep(30)",
         str(out)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (out / "meta.json").read_bytes()
        with pytest.raises(DirLocked, match=rf"index {out} is being written by another process \(pid {holder.pid}\)"):
            with updating(out, timeout=0.3) as index:
                index.remove([1])
                index.save()
        assert (out / "meta.json").read_bytes() == before and len(open_index(out)) == 3
    finally:
        holder.kill()
        holder.wait()
    with updating(out, timeout=5) as index:  # the lock died with its holder
        index.remove([1])
        index.save()
    assert len(open_index(out)) == 2


# ------------------------------------------------------------------------------ 2. build --out
def test_index_build_out_existing_dir_keeps_user_files(tmp_path):
    vectors, ids = unit(5, 0), [1, 2, 3, 4, 5]
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "sub" / "data.csv").write_text("1,2\n")
    before = tree(mine)
    with pytest.raises(ValueError, match=r"mine: is a non-empty folder that is not a dashclip index output \(sub, thesis.txt\).*--overwrite"):
        build_index(vectors, ids, mine)
    assert tree(mine) == before and (mine / "thesis.txt").read_text() == "years of work"

    # an output may not be, or contain, an input (catalog, embeddings, model dirs)
    catalog, emb = tmp_path / "catalog", tmp_path / "work" / "emb"
    catalog.mkdir()
    (catalog / "catalog.parquet").write_bytes(b"PAR1")
    emb.mkdir(parents=True)
    for out, meta in [(catalog, {"catalog_dir": str(catalog)}), (tmp_path / "work", {"embeddings_dir": str(emb)}),
                      (tmp_path, {"catalog_dir": str(catalog)})]:
        with pytest.raises(ValueError, match="(is|holds) the input"):
            build_index(vectors, ids, out, meta=meta, overwrite=True)
    assert (catalog / "catalog.parquet").read_bytes() == b"PAR1" and emb.is_dir()
    with pytest.raises(ValueError, match="holds the input"):
        build_index(vectors, ids, tmp_path / "work", inputs=[emb])

    # a missing dir, an empty dir, an index dir: fine; user files next to an index survive a rebuild
    build_index(vectors, ids, tmp_path / "new")
    (tmp_path / "empty").mkdir()
    build_index(vectors, ids, tmp_path / "empty")
    (tmp_path / "new" / "NOTES.md").write_text("mine")
    build_index(vectors[::-1].copy(), ids, tmp_path / "new")
    assert (tmp_path / "new" / "NOTES.md").read_text() == "mine"
    # --overwrite: the user asked for the contents to go
    assert len(build_index(vectors, ids, mine, overwrite=True)) == 5 and not (mine / "thesis.txt").exists()


def test_index_build_cli_refuses_non_index_out_before_embedding(tmp_path, monkeypatch):
    """`dashclip index build --out DIR`: a user dir is refused before the model embeds anything."""
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
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", mine, "-q")
    assert code == 2 and "non-empty folder that is not a dashclip index output" in output and "--overwrite" in output
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", catalog, "-q")
    assert code == 2 and "is the input" in output
    assert (mine / "keep.txt").read_text() == "x" and not (tmp_path / "mine-embeddings").exists()


# ------------------------------------------------------------------------------ 3. atomic switch
class Killed(BaseException):
    """A kill -9 at a chosen point: no clean-up handler runs."""


def test_index_swap_is_atomic_when_killed(tmp_path, monkeypatch):
    out = tmp_path / "idx"
    old_v, new_v = unit(6, 0), unit(6, 1)
    build_index(old_v, list(range(6)), out)
    want_old = open_index(out).search(old_v, 1)[0]

    def kill(*args, **kwargs):
        raise Killed()

    # killed after the new data was written, before the switch: the old index, whole
    monkeypatch.setattr(index_base, "_switch", kill)
    monkeypatch.setattr(index_base, "_discard", lambda directory: None)  # a killed process cleans nothing
    with pytest.raises(Killed):
        build_index(new_v, list(range(6)), out)
    monkeypatch.undo()
    data_dirs = sorted(p.name for p in out.iterdir() if p.name.startswith("data."))
    assert len(data_dirs) == 2                                     # the live one + the killed writer's
    assert open_index(out).search(old_v, 1)[0] == want_old
    assert (out / "meta.json").exists() and open_index(out).meta["data"] in data_dirs

    # killed after the switch, before the clean-up: the new index, whole
    monkeypatch.setattr(index_base, "clean_index_dir", kill)
    with pytest.raises(Killed):
        build_index(new_v, list(range(6)), out)
    monkeypatch.undo()
    reopened = open_index(out)
    got = reopened.search(new_v, 1)[0]
    assert got == [[i] for i in range(6)]

    # the next save cleans every leftover: only the live data dir and the one before it stay
    reopened.remove([5])
    reopened.save()
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(("data.", ".")))
    assert len([n for n in left if n.startswith("data.")]) == 2 and reopened.meta["data"] in left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden next to the index
    assert len(open_index(out)) == 5


def test_index_swap_readers_never_see_a_missing_index(tmp_path):
    """A reader opening the index over and over while a writer saves 15 times never fails."""
    out = tmp_path / "idx"
    build_index(unit(50, 0), list(range(50)), out)
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
            with updating(out) as index:
                if index.has(1000):
                    index.remove([1000])
                else:
                    index.add([1000], unit(1, i))
                index.save()
    finally:
        stop.set()
        t.join()
    assert failures == [] and opened[0] > 0


def test_index_swap_opens_a_flat_dir_of_format_1(tmp_path):
    """An index dir written before versioned data dirs (files next to meta.json) opens, and updates."""
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
    assert open_index(out).search(vectors, 1)[0] == [[1], [2], [3], [4]]
    with updating(out) as index:
        index.remove([4])
        index.save()
    assert len(open_index(out)) == 3 and (out / "index.faiss").exists()  # kept one save, for readers
    with updating(out) as index:
        index.remove([3])
        index.save()
    assert len(open_index(out)) == 2 and not (out / "index.faiss").exists() and not (out / "ids.parquet").exists()


# ------------------------------------------------------------------------------ 4. working dir
def test_index_opens_from_another_working_dir(tmp_path, monkeypatch):
    """Built with relative paths in one working dir; its catalog is found from any other."""
    from dashclip.serving.search import resolve_catalog_dir

    work = tmp_path / "work"
    (work / "data" / "catalog").mkdir(parents=True)
    monkeypatch.chdir(work)
    build_index(unit(3, 0), [1, 2, 3], Path("runs/index"),
                meta={"catalog_dir": "data/catalog", "embeddings_dir": "data/emb"})
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    index_dir = work / "runs" / "index"
    meta = open_index(index_dir).meta
    assert not Path(meta["catalog_dir"]).is_absolute()             # relative to the index dir: it can move
    assert resolve_catalog_dir(meta, None, index_dir).resolve() == (work / "data" / "catalog").resolve()
    monkeypatch.chdir(tmp_path)
    assert resolve_catalog_dir(meta, None, Path("work/runs/index")).resolve() == (work / "data" / "catalog").resolve()
    # the index and its catalog moved together: still found
    (tmp_path / "moved").mkdir()
    work.rename(tmp_path / "moved" / "work")
    moved = tmp_path / "moved" / "work" / "runs" / "index"
    assert resolve_catalog_dir(open_index(moved).meta, None, moved).is_dir()


def test_index_opens_from_another_working_dir_search_cli(tmp_path_factory, tmp_path, monkeypatch):
    """`dashclip search` from another working dir than `index build`'s."""
    from typer.testing import CliRunner

    from dashclip.cli import app
    from test_search_fixtures import build_shop_index, shared_shop

    shop = shared_shop(tmp_path_factory)
    monkeypatch.chdir(shop.root)
    build_shop_index(shop.model, type(shop.catalog).open(Path(os.path.relpath(shop.catalog_dir, shop.root))),
                     tmp_path / "index")
    assert not Path(open_index(tmp_path / "index").meta["catalog_dir"]).is_absolute()
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    result = CliRunner().invoke(app, ["search", "red dress", "--model", str(shop.model_dir), "--index",
                                      str(tmp_path / "index"), "-k", "3"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3 results" in result.output


# ------------------------------------------------------------------------------ 7. label map
def test_corrupt_label_map_is_a_clear_error_not_an_index_error(tmp_path):
    out = tmp_path / "idx"
    attrs = pd.DataFrame({"colour": ["red", "blue", "red", "blue"]})
    build_index(unit(4, 0), [1, 2, 3, 4], out, attributes=attrs)
    ids_file = out / open_index(out).meta["data"] / "ids.parquet"
    good = pd.read_parquet(ids_file)
    for bad_labels in ([0, 1, 2, 9999], [0, 1, 1, 3], [0, 1, 2, -5]):
        good.assign(label=bad_labels).to_parquet(ids_file, index=False)
        with pytest.raises(ValueError, match=r"ids.parquet: the label map is corrupt"):
            open_index(out).search(unit(1, 3), 2, filters={"colour": ["red"]})
    good.to_parquet(ids_file, index=False)
    assert open_index(out).search(unit(1, 3), 2, filters={"colour": ["red"]})[0][0] in ([1, 3], [3, 1])
