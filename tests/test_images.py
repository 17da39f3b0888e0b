"""load_image: the one safe way to open an image. Every fixture is drawn here with Pillow."""
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dashclip.data.images import ImageError, check_image, load_image
from image_bytes import png_claiming


def encoded(fmt: str, size=(64, 48), mode="RGB") -> bytes:
    """A noisy image (so JPEG cannot compress it to nothing), encoded as `fmt`."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_good_images_load_as_rgb(tmp_path):
    for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("GIF", "P"), ("WEBP", "RGB")]:
        im = load_image(write(tmp_path, f"a.{fmt.lower()}", encoded(fmt, mode=mode)))
        assert im.mode == "RGB" and im.size == (64, 48), (fmt, mode)


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([0, 0, 1, 1], fill=(0, 0, 255, 255))
    im.save(tmp_path / "t.png")
    rgb = load_image(tmp_path / "t.png")
    assert rgb.getpixel((3, 3)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)


def test_max_side_downscales(tmp_path):
    im = load_image(write(tmp_path, "big.jpg", encoded("JPEG", size=(800, 400))), max_side=100)
    assert im.size == (100, 50)


@pytest.mark.parametrize("name,data,kind,words", [
    ("empty.jpg", b"", "zero_byte", "zero-byte"),
    ("notes.jpg", b"these are my notes, not a photo", "not_an_image", "not an image"),
    ("page.png", b"<!DOCTYPE html><html>404</html>", "not_an_image", "HTML"),
    ("eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not_an_image", "not an image"),
])
def test_not_images(tmp_path, name, data, kind, words):
    path = write(tmp_path, name, data)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == kind
    assert words in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_truncated(tmp_path, fmt):
    data = encoded(fmt)
    path = write(tmp_path, f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "truncated" and "truncated" in str(err.value)


def test_corrupt_png_data(tmp_path):
    data = bytearray(encoded("PNG"))
    data[100:140] = bytes(40)
    with pytest.raises(ImageError) as err:
        load_image(write(tmp_path, "bad.png", bytes(data)))
    assert err.value.kind == "corrupt" and "corrupt" in str(err.value)


# dashclip turns Pillow's DecompressionBombWarning into an error at import; pytest resets warning filters,
# so the mark restores that for the test.
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 100_000])  # over Pillow's warning limit, and over its error limit
def test_decompression_bomb_is_rejected_before_decoding(tmp_path, side):
    path = write(tmp_path, "bomb.png", png_claiming(side, side))
    assert path.stat().st_size < 500
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "decompression_bomb" and "decompression bomb" in str(err.value)


def test_own_pixel_limit(tmp_path):
    path = write(tmp_path, "a.png", encoded("PNG", size=(200, 100)))
    with pytest.raises(ImageError) as err:
        load_image(path, max_pixels=10_000)
    assert err.value.kind == "decompression_bomb" and "20,000 pixels" in str(err.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nope.jpg")
    assert err.value.kind == "missing" and "nope.jpg" in str(err.value)
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    assert err.value.kind == "unreadable"


def test_check_image_reports_format_and_size():
    info = check_image(encoded("PNG", size=(30, 20)))
    assert (info.format, info.width, info.height, info.extension) == ("PNG", 30, 20, ".png")
