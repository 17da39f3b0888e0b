"""The built-in presets, on tiny copies of the two dataset layouts built here (DASHCLIP_DATA points at them),
plus checks against the real shared data when it is present."""
import io

import pytest
from PIL import Image

from dashclip.data.catalog import Catalog
from dashclip.data.importer import import_catalog
from dashclip.data.presets import PRESETS, get_preset, readable_class_name
from dashclip.data.tables import read_table
from dashclip.settings import data_dir


def jpeg(color=(10, 120, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 16), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DASHCLIP_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_fashion_preset_layout(fake_data, tmp_path):
    root = fake_data / "fashion-product-images-small"
    (root / "images").mkdir(parents=True)
    (root / "catalog.csv").write_text(
        "id,productDisplayName,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,has_image\n"
        "15970,Turtle Check Men Navy Blue Shirt,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,1\n"
        "39386,Peter England Men Party Blue Jeans,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,0\n"
        "30991,NA,Women,Apparel,Topwear,Tops,White,Summer,2012,,1\n")
    (root / "images" / "15970.jpg").write_bytes(jpeg())
    (root / "images" / "30991.jpg").write_bytes(jpeg())
    result = import_catalog("fashion-product-images-small", out=tmp_path / "cat")
    r = result.report
    assert (r.rows_read, r.products, r.products_with_image) == (3, 2, 1)
    assert r.counts() == {"image_missing": 1, "empty_title": 1}   # has_image=0 -> kept, text only; "NA" dropped
    cat = Catalog.open(tmp_path / "cat")
    assert cat.attributes == ["subCategory", "masterCategory", "gender", "baseColour", "usage", "season"]
    shirt = cat.product(15970)
    assert (shirt["title"], shirt["category"], shirt["image"]) == (
        "Turtle Check Men Navy Blue Shirt", "Shirts", "images/15970.jpg")
    assert cat.product(39386)["image"] is None
    assert cat.product_texts()[0].startswith("Turtle Check Men Navy Blue Shirt | Shirts | Topwear")
    assert result.manifest["preset"] == "fashion-product-images-small"


def test_grocery_preset_layout(fake_data, tmp_path):
    ds = fake_data / "grocery-store-dataset" / "dataset"
    apple = ds / "iconic-images-and-descriptions" / "Fruit" / "Apple" / "Golden-Delicious"
    cabbage = ds / "iconic-images-and-descriptions" / "Vegetables" / "Cabbage"
    for d in (apple, cabbage, ds / "train" / "Fruit" / "Apple" / "Golden-Delicious"):
        d.mkdir(parents=True)
    (apple / "Golden-Delicious_Iconic.jpg").write_bytes(jpeg())
    (apple / "Golden-Delicious_Description.txt").write_text("A sweet apple.")
    (apple / "Golden-Delicious_Information.txt").write_text("Title: Apple Golden Delicious Class 1 \nURL: x\n")
    (cabbage / "Cabbage_Iconic.jpg").write_bytes(jpeg((0, 200, 0)))
    (cabbage / "Cabbage_Description.txt").write_text("Green  cabbage.\n")
    (ds / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),"
        "Product Description Path (str)\n"
        "Golden-Delicious,0,Apple,0,/iconic-images-and-descriptions/Fruit/Apple/Golden-Delicious/"
        "Golden-Delicious_Iconic.jpg,/iconic-images-and-descriptions/Fruit/Apple/Golden-Delicious/"
        "Golden-Delicious_Description.txt\n"
        "Cabbage,1,Cabbage,1,/iconic-images-and-descriptions/Vegetables/Cabbage/Cabbage_Iconic.jpg,"
        "/iconic-images-and-descriptions/Vegetables/Cabbage/Cabbage_Description.txt\n")
    for i in (1, 2):
        (ds / "train" / "Fruit" / "Apple" / "Golden-Delicious" / f"Golden-Delicious_00{i}.jpg").write_bytes(jpeg())
    (ds / "train.txt").write_text("train/Fruit/Apple/Golden-Delicious/Golden-Delicious_002.jpg, 0, 0\n"
                                  "train/Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg, 0, 0\n"
                                  "train/Fruit/Apple/Golden-Delicious/Golden-Delicious_009.jpg, 0, 0\n"
                                  "train/x.jpg, 77, 0\n")
    (ds / "val.txt").write_text("")
    (ds / "test.txt").write_text("")
    result = import_catalog("grocery-store-dataset", out=tmp_path / "cat")
    r = result.report
    assert (r.products, r.products_with_image, r.extra_images_read, r.extra_images) == (2, 2, 4, 2)
    assert r.counts() == {"image_missing": 1, "unknown_product": 1}
    assert "train.txt line 4, field product_id" in [p for p in r.problems if p.code == "unknown_product"][0].message
    cat = Catalog.open(tmp_path / "cat")
    assert cat.product(0)["title"] == "Apple Golden Delicious Class 1"     # from the Information file
    assert cat.product(1)["title"] == "Cabbage"                          # no Information file: the class name
    assert cat.product(1)["text"] == "Green cabbage."
    assert (cat.product(0)["category"], cat.product(0)["fine_class"], cat.product(0)["group"]) == (
        "Apple", "Golden-Delicious", "Fruit")
    extra = cat.images[cat.images["role"] == "extra"]
    assert extra["split"].tolist() == ["train", "train"]
    assert extra["image"].tolist() == ["images/0.x0001.jpg", "images/0.x0002.jpg"]


def test_readable_class_name():
    assert readable_class_name("Golden-Delicious") == "Golden Delicious"


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="did you mean 'grocery-store-dataset'"):
        get_preset("grocery-store")


@pytest.mark.skipif(not (data_dir() / "fashion-product-images-small").is_dir(), reason="shared data not here")
def test_real_fashion_csv_has_the_preset_columns():
    source = get_preset("fashion-product-images-small").load()
    table = read_table(source.file)
    m = source.mapping
    for col in [m.id, m.title, m.category, *m.attrs]:
        assert col in table.columns
    assert len(table.rows) == 44_446


@pytest.mark.slow
@pytest.mark.skipif(not (data_dir() / "grocery-store-dataset").is_dir(), reason="shared data not here")
def test_real_grocery_import(tmp_path):
    result = import_catalog("grocery-store-dataset", out=tmp_path / "cat")
    r = result.report
    assert (r.products, r.products_with_image, r.extra_images) == (81, 81, 5421)
    assert r.counts() == {}
    cat = Catalog.open(tmp_path / "cat")
    assert cat.images.groupby("split").size().to_dict() == {"test": 2485, "train": 2640, "val": 296}
    assert cat.product(0)["title"] == "Apple Golden Delicious Class 1"
    assert set(PRESETS) == {"fashion-product-images-small", "grocery-store-dataset"}


def test_cli_imports_a_preset_without_flags(fake_data, tmp_path):
    from typer.testing import CliRunner

    from dashclip.cli import app

    root = fake_data / "fashion-product-images-small"
    (root / "images").mkdir(parents=True)
    (root / "catalog.csv").write_text(
        "id,productDisplayName,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,has_image\n"
        "1,Red Shirt,Men,Apparel,Topwear,Shirts,Red,Fall,2011,Casual,1\n")
    (root / "images" / "1.jpg").write_bytes(jpeg())
    res = CliRunner().invoke(app, ["catalog", "import", "fashion-product-images-small", "--out",
                                   str(tmp_path / "cat"), "-q"])
    assert res.exit_code == 0, res.output
    assert Catalog.open(tmp_path / "cat").product(1)["image"] == "images/1.jpg"


def test_product_texts_read_only_their_columns_and_match_product_text():
    """`product_texts` (column lists) gives what `product_text` gives row by row: missing values, repeats of
    the title and columns that are not attributes are left out, the text field comes last."""
    import pandas as pd

    from dashclip.data.catalog import product_text, product_texts

    products = pd.DataFrame({
        "id": [1, 2, 3], "title": ["Blue Shirt", "Red Mug", "Lamp"], "category": ["Shirts", None, "lamp"],
        "colour": pd.array(["Blue", pd.NA, "White"], dtype="string[pyarrow]"), "price": [9.5, 3.0, float("nan")],
        "text": ["cotton", None, ""]})
    want = [product_text(r, ["colour", "size"]) for r in products.to_dict("records")]
    assert product_texts(products, ["colour", "size"]) == want
    assert want == ["Blue Shirt | Shirts | Blue | cotton", "Red Mug", "Lamp | White"]
    assert product_texts(products.iloc[[2, 0]], ["colour"]) == [want[2], want[0]]
