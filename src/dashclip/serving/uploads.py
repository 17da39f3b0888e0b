"""Photo uploads of the HTTP service, read as hostile input: the request body is read into memory up to a
limit (never spooled to a temporary file), split by a small multipart/form-data parser, and the image part's
bytes go to `data.images.decode_query_image`, the one safe decoder of photo queries. The file name a client
sends is never used: no part of a request reaches a filesystem path.

    body = await read_body(request, MAX_UPLOAD_BODY)           # 413 past the limit, however it is sent
    parts = parse_multipart(body, request.headers["content-type"])
    photo = parts["image"].data                                # bytes
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.images import QUERY_MAX_BYTES

MAX_PARTS = 8                             # form fields per upload
MAX_UPLOAD_BODY = QUERY_MAX_BYTES + 64 * 1024   # the photo plus the multipart framing and a few small fields
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([a-zA-Z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


class UploadError(ValueError):
    """A request body that cannot be read as an upload. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None      # as sent: shown nowhere, used for nothing
    content_type: str | None = None


def too_large(size: int | str, limit: int) -> UploadError:
    return UploadError(f"upload is {size} bytes, over the limit of {limit:,} bytes (a photo may be at most "
                       f"{QUERY_MAX_BYTES // (1024 * 1024)} MB)", 413)


async def read_body(request, limit: int = MAX_UPLOAD_BODY) -> bytes:
    """The request body, in memory; more than `limit` bytes (by Content-Length, or as it streams in when the
    length is not given or is wrong) is an UploadError 413, and reading stops there."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise UploadError(f"bad Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise too_large(f"{int(length):,}", limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit:,}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str | None) -> dict[str, Part]:
    """multipart/form-data -> {field name: Part}. Refuses another content type (415), a missing boundary,
    more than MAX_PARTS parts, a repeated field and a malformed part (400), each with a message."""
    if not content_type or content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise UploadError(f"send the photo as multipart/form-data (a form with a file field 'image'), not "
                          f"{(content_type or 'no content type')[:80]!r}", 415)
    m = _BOUNDARY.search(content_type)
    if not m:
        raise UploadError("multipart/form-data without a boundary")
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise UploadError("malformed multipart body (no closing boundary: was the upload cut off?)")
    parts: dict[str, Part] = {}
    for piece in pieces[1:-1]:
        if len(parts) >= MAX_PARTS:
            raise UploadError(f"more than {MAX_PARTS} form fields")
        if not piece.startswith(b"\r\n") or not piece.endswith(b"\r\n"):
            raise UploadError("malformed multipart part (bad line breaks around a boundary)")
        head, sep, data = piece[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise UploadError("malformed multipart part (no blank line after its headers)")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        params = dict((k.lower(), a if a else b) for k, a, b in _PARAM.findall(";" + headers.get("content-disposition", "").partition(";")[2]))
        if not headers.get("content-disposition", "").lower().startswith("form-data") or not params.get("name"):
            raise UploadError("malformed multipart part (no Content-Disposition: form-data; name=...)")
        name = params["name"]
        if name in parts:
            raise UploadError(f"form field {name[:40]!r} is sent twice")
        parts[name] = Part(name, data, params.get("filename"), headers.get("content-type"))
    return parts
