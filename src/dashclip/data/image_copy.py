"""The images of an import: where each one comes from and how it is copied into the catalog dir.

A local path must resolve inside the images dir (no "../", absolute path or symlink out). A URL is fetched only
over http(s), each redirect hop checked, and never from a host that resolves to a loopback, link-local or private
address (unless allowed). Every image is validated (size cap before reading, pixel cap from the header before
decoding), downscaled above `max_side`, and written under a file name made from the product id.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .images import ImageError, check_image, decode_image, probe_image, read_image_bytes

DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024   # one cap for a local image file (checked by stat) and a download
# Import refuses larger images before decoding: a 40 MP RGB image is 120 MB decoded (9000 x 9000 would be 243 MB,
# times the worker threads). Photos of today's phones (12-24 MP) pass. load_image's own default is Pillow's.
IMPORT_MAX_PIXELS = 40_000_000
LARGE_DECODE_PIXELS = 4_000_000   # images above this decode one at a time, so the threads never hold many
MAX_REDIRECTS = 5
# Downloads that could not reach their host (no name resolved, no connection, timed out), in a row and with no
# download having reached one, before the import stops trying the rest: behind a firewall that drops packets
# each try waits out its timeout, hours for a large catalog. The products are kept without an image.
NETWORK_GIVE_UP = 32


@dataclass
class ImageJob:
    product_key: Any
    ref: str            # path as written in the input, or a URL
    path: Path | None   # resolved local path (None for URLs)
    role: str           # "primary" | "extra"
    split: str | None
    file: str           # input file and row that named this image, for messages
    row: int
    field: str
    row_label: str
    dest: str = ""      # catalog-relative path without extension, e.g. "images/15970"


@dataclass
class ImageOutcome:
    job: ImageJob
    rel: str | None = None          # catalog-relative path when written
    digest: str | None = None       # sha256 of the written bytes
    error: ImageError | None = None
    downscaled: tuple[int, int, int, int] | None = None   # (w, h, new_w, new_h)


_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})


def _safe_stem(key: Any) -> str:
    """A file-name stem for a product id that is safe on every file system (never a path from the input):
    the id itself when it is short, lowercase [a-z0-9_-], else a slug plus a hash of the id."""
    s = str(key)
    if re.fullmatch(r"[a-z0-9_-]{1,64}", s) and s not in _WINDOWS_RESERVED:
        return s
    slug = re.sub(r"[^a-z0-9_-]+", "-", s.lower()).strip("-")[:40] or "id"
    return f"{slug}-{hashlib.sha1(s.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def inside(images_root: Path, ref: str) -> Path | None:
    """The real path of `ref` (relative to the images dir, symlinks followed) when it lies inside the
    images dir `images_root` (itself a real path); None when it leaves it: "../", an absolute path, or a
    symlink pointing out. Nothing is read, so the answer never says whether the target exists."""
    if os.path.isabs(ref) or ref.startswith("~"):
        return None
    real = Path(os.path.realpath(images_root / ref))
    return real if real == images_root or images_root in real.parents else None


def _private_address(host: str, port: int) -> str | None:
    """The first address of `host` that is loopback, link-local, private or otherwise not public; None when
    every address it resolves to is public. Raises ImageError when it does not resolve."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise _unreachable(ImageError("fetch_failed", f"download failed: cannot resolve host {host!r} ({e})")) from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return str(ip)
    return None


def _check_url(url, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or (unless `allow_private`) whose host resolves to any address that
    is not public: loopback, link-local, private. Checked before connecting, so a refusal says nothing about
    what listens there."""
    if url.scheme not in ("http", "https") or not url.host:
        raise ImageError("url_refused", "URL refused: only http(s) URLs with a host are fetched")
    if allow_private:
        return
    address = _private_address(url.host, url.port or (443 if url.scheme == "https" else 80))
    if address is not None:
        raise ImageError("url_refused", f"URL refused: host {url.host!r} resolves to the non-public address "
                                        f"{address} (give --allow-private-urls to fetch from a local network)")


class _NetworkWatch:
    """Whether downloading can work at all on this machine (see NETWORK_GIVE_UP). Thread-safe."""

    def __init__(self, give_up: int = NETWORK_GIVE_UP):
        self.give_up, self.failures, self.reached, self.last = give_up, 0, False, ""
        self._lock = threading.Lock()

    def down(self) -> bool:
        with self._lock:
            return not self.reached and self.failures >= self.give_up

    def record(self, error: ImageError | None) -> None:
        """A download's end: a response of any status reaches a host; an unreachable host counts against."""
        with self._lock:
            if error is None or not getattr(error, "unreachable", False):
                self.reached = True
            else:
                self.failures += 1
                self.last = error.reason

    def skipped(self, ref: str) -> ImageError:
        return ImageError("fetch_skipped", f"not downloaded: the first {self.failures} downloads could not reach "
                                           f"their hosts (the last: {self.last}); no network here? Import again "
                                           f"where there is, or give local image paths", ref)


def _unreachable(error: ImageError) -> ImageError:
    error.unreachable = True       # no host answered: what _NetworkWatch counts
    return error


def _fetch(client, url: str, max_bytes: int, allow_private: bool = False) -> bytes:
    """Download `url` (at most `max_bytes`), following redirects by hand so every hop's host is checked."""
    import httpx

    try:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(target, allow_private)
            with client.stream("GET", target) as r:
                if r.is_redirect and "location" in r.headers:
                    target = target.join(r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise ImageError("fetch_failed", f"download failed: HTTP {r.status_code}")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ImageError("fetch_failed", f"download refused: {int(declared):,} bytes is over the "
                                                     f"limit of {max_bytes:,}")
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageError("fetch_failed", f"download stopped: over the limit of {max_bytes:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ImageError("fetch_failed", f"download failed: more than {MAX_REDIRECTS} redirects")
    except ImageError as e:
        error = ImageError(e.kind, e.reason, url)
        raise (_unreachable(error) if getattr(e, "unreachable", False) else error) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as e:   # no connection made
        raise _unreachable(ImageError("fetch_failed", f"download failed ({type(e).__name__}: {e})", url)) from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
        raise ImageError("fetch_failed", f"download failed ({type(e).__name__}: {e})", url) from None


def _process_image(job: ImageJob, out_root: Path, max_side: int, max_pixels: int, client,
                   max_image_bytes: int, allow_private_urls: bool = False,
                   large_decode: threading.Lock | None = None,
                   network: _NetworkWatch | None = None) -> ImageOutcome:
    """Read (or download), validate and copy one image. Fine images keep their original bytes.
    The file size and pixel count are checked before decoding; an image over LARGE_DECODE_PIXELS decodes
    under `large_decode`, so the threads never hold more than one large image at a time. A URL is not
    tried once `network` says downloads cannot work here."""
    outcome = ImageOutcome(job)
    try:
        if job.path is not None:
            data = read_image_bytes(job.path, max_bytes=max_image_bytes)
        elif network is not None and network.down():
            raise network.skipped(job.ref)
        else:
            try:
                data = _fetch(client, job.ref, max_image_bytes, allow_private_urls)
            except ImageError as e:
                if network is not None and e.kind == "fetch_failed":
                    network.record(e)
                raise
            if network is not None:
                network.record(None)
        info = probe_image(data, job.ref, max_pixels=max_pixels)
        large = info.width * info.height > LARGE_DECODE_PIXELS and large_decode is not None
        with (large_decode if large else contextlib.nullcontext()):
            data, ext = _validated(data, info, job, max_side, max_pixels, outcome)
    except ImageError as e:
        outcome.error = e
        return outcome
    rel = job.dest + ext
    (out_root / rel).write_bytes(data)
    outcome.rel = rel
    outcome.digest = hashlib.sha256(data).hexdigest()
    return outcome


def _validated(data: bytes, info, job: ImageJob, max_side: int, max_pixels: int, outcome: ImageOutcome):
    """Decode once: -> (the bytes to copy, their extension); downscaled above `max_side`."""
    ext = info.extension
    if max(info.width, info.height) <= max_side:
        check_image(data, job.ref, max_pixels=max_pixels)
    else:
        im = decode_image(data, job.ref, max_side=max_side, max_pixels=max_pixels)
        buf = io.BytesIO()
        if info.format in ("JPEG", "MPO"):
            im.save(buf, "JPEG", quality=90)
            ext = ".jpg"
        else:
            im.save(buf, "PNG")
            ext = ".png"
        data = buf.getvalue()
        outcome.downscaled = (info.width, info.height, *im.size)
    return data, ext


def unique_stems(keys: Iterable) -> dict:
    """Product id -> image file stem. Two ids could (very rarely) give the same stem, or the same stem up to
    case: the later ones, in id order, get a number."""
    stems, seen = {}, set()
    for key in sorted(keys):
        base = stem = _safe_stem(key)
        n = 1
        while stem.lower() in seen:
            n += 1
            stem = f"{base}_{n}"
        seen.add(stem.lower())
        stems[key] = stem
    return stems


def run_image_jobs(jobs, out_root, max_side, max_pixels, workers, fetch_timeout, max_image_bytes,
                   progress, allow_private_urls=False) -> list[ImageOutcome]:
    """Validate and copy images on a thread pool (Pillow decodes with the GIL released)."""
    import httpx

    workers = workers or min(16, 2 * (os.cpu_count() or 2))
    client = None
    if any(j.path is None for j in jobs):
        client = httpx.Client(timeout=fetch_timeout, follow_redirects=False,  # each hop is checked: _fetch
                              limits=httpx.Limits(max_connections=workers))
    large_decode, network = threading.Lock(), _NetworkWatch()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = []
            chunk = 256  # submit in chunks so progress moves and memory stays flat
            for start in range(0, len(jobs), chunk):
                batch = jobs[start:start + chunk]
                outcomes.extend(pool.map(lambda j: _process_image(j, out_root, max_side, max_pixels, client,
                                                                   max_image_bytes, allow_private_urls,
                                                                   large_decode, network), batch))
                if progress:
                    progress(len(outcomes), len(jobs))
    finally:
        if client is not None:
            client.close()
    if progress and not jobs:
        progress(0, 0)
    return outcomes
