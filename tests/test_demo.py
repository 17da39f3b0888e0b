"""`dashclip demo --quick --no-serve` end to end on a sample of the shared fashion catalog: every step
runs, the outputs a user keeps are usable, and a second run reuses every finished step."""
import json

import pytest
from typer.testing import CliRunner

from dashclip.settings import data_dir

pytestmark = pytest.mark.skipif(not (data_dir() / "fashion-product-images-small" / "catalog.csv").exists(),
                                reason="needs ../shared/data/fashion-product-images-small")


def test_quick_demo_runs_end_to_end_and_reuses_its_steps(tmp_path):
    import dashclip
    from dashclip.cli import app
    from dashclip.index import open_index

    work = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--no-serve", "--work", str(work)])
    assert res.exit_code == 0, res.output
    record = json.loads((work / "demo.json").read_text())
    assert list(record["steps"]) == ["import", "stage1", "embed", "labels", "stage2", "photos", "index", "eval"]
    labels = record["steps"]["labels"]
    assert labels["graded_pairs"] > labels["seed_grades"]
    # the default recipe does not filter grades by the reading rule (close to the evaluation's label
    # rule): every model grade reaches Stage 2 ([labels] check = true filters; tests/test_vocabulary.py)
    assert labels["check"] is False and labels["checked_pairs_kept"] == labels["graded_pairs"]

    model = dashclip.load(work / "model")
    assert model.has_query_encoder
    # photo alignment ran on the sample's images and its head ships in the model
    photos = record["steps"]["photos"]
    assert model.has_photo_encoder and photos["train_photos"] > 1000 and photos["steps"] >= 2
    index = open_index(work / "index", model.model_id)
    ids, scores = index.search(model.encode_query(["black running shoes for men"]).numpy(), 5)
    assert len(ids[0]) == 5 and scores[0][0] >= scores[0][-1]
    assert (work / "report" / "report.md").exists() and (work / "report" / "report.html").exists()
    assert record["steps"]["eval"]["headline"], "the report has no retrieval table"

    again = CliRunner().invoke(app, ["demo", "--quick", "--no-serve", "--work", str(work)])
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 8
