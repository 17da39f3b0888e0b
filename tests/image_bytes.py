"""Image bytes built by hand for the image and catalog-import tests (tests/test_images.py,
tests/test_catalog_import.py, tests/test_reliability_import.py); no tests here."""
from __future__ import annotations

import struct
import zlib


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid PNG header that claims width x height pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))
