"""Safe image loading: the one way dashclip opens an image file.

Every stage (import, models, serving) goes through `load_image`, so the same checks apply everywhere:

- only raster formats that Pillow decodes itself are accepted (JPEG incl. MPO, PNG, WebP, GIF, BMP, TIFF):
  no EPS/PDF, which would hand the bytes to an external program;
- the pixel count is checked from the header *before* decoding, so a decompression bomb (a small file
  that claims 20,000 x 20,000 pixels) is rejected without allocating it;
- the whole image is decoded, so a truncated or corrupt file fails here and not halfway through training;
- the result is RGB (palette, grey, CMYK and alpha are flattened onto white), EXIF rotation applied.

Problems raise `ImageError`, whose `kind` is one of IMAGE_ERROR_KINDS and whose message says what is wrong.
"""
from __future__ import annotations

import io
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default (about 89.5 megapixels): a 6000 x 4000 photo (24 MP) passes, a bomb does not.
MAX_PIXELS = 89_478_485
# Photo queries (search by photo: the API, `dashclip search --image`, HTTP uploads) are refused above these,
# before they are decoded, and decoded no larger than QUERY_MAX_SIDE (the towers need far less).
QUERY_MAX_BYTES = 10 * 1024 * 1024
QUERY_MAX_PIXELS = 40_000_000
QUERY_MAX_SIDE = 1024
# Formats decoded by Pillow in-process. Anything else is refused as "not an image".
SAFE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (phone photos)
# File extension written for each format when an image is copied into a catalog.
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tif"}
IMAGE_ERROR_KINDS = ("missing", "unreadable", "zero_byte", "too_large", "not_an_image", "truncated", "corrupt",
                     "decompression_bomb", "fetch_failed",
                     # in the import only (image_copy.py): URLs, and paths that leave the images dir
                     "url_refused", "outside_images_dir", "fetch_skipped")

# Pillow *warns* (and only errors at twice its limit) about oversized images; make the warning an
# exception so it can never be missed. Set once here, because warnings.catch_warnings is not thread-safe.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image that cannot be used. `kind` is a short code (see IMAGE_ERROR_KINDS), `path` the file."""

    def __init__(self, kind: str, message: str, path: str | os.PathLike | None = None):
        self.kind = kind
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.reason = message


@dataclass(frozen=True)
class ImageInfo:
    """What `check_image` found: the decoded format and the size in pixels."""

    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, "." + self.format.lower())


def _describe_non_image(data: bytes) -> str:
    """A hint at what a non-image file actually is, for the error message."""
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith((b"{", b"[")):
        return "JSON or text"
    if head.startswith(b"%pdf"):
        return "a PDF"
    try:
        data[:256].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "an unknown binary format"


def _open(data: bytes, path, max_pixels: int) -> Image.Image:
    """Open (header only) and check the format and pixel count; nothing is decoded yet."""
    if len(data) == 0:
        raise ImageError("zero_byte", "zero-byte file (empty)", path)
    try:
        im = Image.open(io.BytesIO(data), formats=SAFE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("decompression_bomb", f"decompression bomb rejected ({e})", path) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", f"not an image (looks like {_describe_non_image(data)}; "
                                         f"accepted formats: {', '.join(SAFE_FORMATS)})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        raise ImageError("corrupt", f"corrupt image header ({e})", path) from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"corrupt image: size {width}x{height}", path)
    if width * height > max_pixels:
        raise ImageError("decompression_bomb",
                         f"decompression bomb rejected: {width}x{height} = {width * height:,} pixels "
                         f"is over the limit of {max_pixels:,}", path)
    return im


def _decode(im: Image.Image, path) -> Image.Image:
    """Decode every pixel (this is what finds truncated and corrupt files)."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("decompression_bomb", f"decompression bomb rejected ({e})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error) as e:
        text = str(e)
        if "truncated" in text.lower() or isinstance(e, EOFError):
            raise ImageError("truncated", f"truncated image ({text or 'unexpected end of file'})", path) from None
        raise ImageError("corrupt", f"corrupt image data ({text})", path) from None
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im) or im
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def _too_large(size: int, max_bytes: int, path) -> ImageError:
    return ImageError("too_large", f"file is {size:,} bytes, over the limit of {max_bytes:,}", path)


def _read(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The file's bytes. With `max_bytes`, a larger file is refused from its size (stat) before it is read,
    and the read stops there even if the file grows meanwhile."""
    p = Path(path)
    if not p.exists():
        raise ImageError("missing", "image file not found", path)
    if not p.is_file():
        raise ImageError("unreadable", "not a regular file", path)
    try:
        if max_bytes is None:
            return p.read_bytes()
        size = p.stat().st_size
        if size > max_bytes:
            raise _too_large(size, max_bytes, path)
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes, path)
        return data
    except OSError as e:
        raise ImageError("unreadable", f"cannot read file ({e.strerror or e})", path) from None


def probe_image(data: bytes, path: str | os.PathLike | None = None, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Format and size from the header only (format and pixel limit checked, nothing decoded)."""
    with _open(data, path, max_pixels) as im:
        return ImageInfo(format=im.format or "", width=im.size[0], height=im.size[1])


def check_image(data: bytes, path: str | os.PathLike | None = None, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Validate image bytes fully (format, pixel limit, complete decode); raise ImageError if unusable."""
    im = _open(data, path, max_pixels)
    with im:
        _decode(im, path)
        return ImageInfo(format=im.format or "", width=im.size[0], height=im.size[1])


def decode_image(data: bytes, path: str | os.PathLike | None = None, max_side: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB image, with the same checks as `load_image`; downscaled to `max_side` if given."""
    im = _open(data, path, max_pixels)
    if max_side and max(im.size) > max_side and im.format in ("JPEG", "MPO"):
        im.draft("RGB", (max_side, max_side))  # let libjpeg decode at 1/2, 1/4 or 1/8 scale: much faster
    _decode(im, path)
    try:  # a broken EXIF block or an odd pixel mode must also end as an ImageError
        rgb = _to_rgb(im)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, zlib.error) as e:
        raise ImageError("corrupt", f"cannot convert {im.mode} image to RGB ({e})", path) from None
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def decode_query_image(data: bytes, what: str = "image", max_bytes: int = QUERY_MAX_BYTES,
                       max_pixels: int = QUERY_MAX_PIXELS, max_side: int | None = QUERY_MAX_SIDE) -> Image.Image:
    """A photo query's bytes -> RGB image, with every check of `decode_image` and the query limits: more than
    `max_bytes` is refused unread ("too_large"), more than `max_pixels` from the header ("decompression_bomb").
    `what` names the photo in messages (never a path: an upload has none)."""
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes, what)
    return decode_image(data, what, max_side=max_side, max_pixels=max_pixels)


def load_image(path: str | os.PathLike, max_side: int | None = None, max_pixels: int = MAX_PIXELS,
               max_bytes: int | None = None) -> Image.Image:
    """Load an image file as RGB, safely. Raises ImageError (missing, zero-byte, too large, not an image,
    truncated, corrupt, decompression bomb, unreadable). `max_side` downscales large images while decoding;
    `max_bytes` refuses a larger file before reading it."""
    return decode_image(_read(path, max_bytes), path, max_side=max_side, max_pixels=max_pixels)


def read_image_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of an image file, with a typed ImageError when it is missing, unreadable or (with
    `max_bytes`) larger than that: checked with stat before reading."""
    return _read(path, max_bytes)


def read_ahead(load, items, workers: int = 1):
    """Yield `load(item)` for each of `items` in order, loading the next `workers` items in threads while
    the caller works on this one: image decoding and preprocessing (Pillow, numpy) release the GIL, so they
    overlap with the tower on other cores. Memory holds at most `workers + 1` loaded items; `load` must be
    safe to call from several threads when `workers` > 1."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    items = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dashclip-read-ahead") as loader:
        pending = deque(loader.submit(load, item) for item in islice(items, max(1, workers)))
        try:
            while pending:
                loaded = pending.popleft().result()
                for item in items:             # keep `workers` loads in flight
                    pending.append(loader.submit(load, item))
                    break
                yield loaded
        finally:       # the caller stopped early: drop what has not started
            for f in pending:
                f.cancel()
