"""Images in rerank requests: what a dialect hands over, the limits and URL policy they pass,
and the decoded picture a multimodal model is given.

A dialect turns an image query or document into a ``MediaDocument`` holding an unresolved
``Picture`` (its ``source``: base64, a ``data:`` URL, or an http(s) URL) and the object the
client sent (echoed by ``return_documents``). The service calls ``resolve`` once it knows the
model: a text-only model refuses images; otherwise every picture is fetched (URLs only on an
allow-listed host), capped in bytes, checked in pixels from its header before anything is
decoded (a 20,000 x 20,000 PNG of a few hundred bytes would otherwise allocate over a gigabyte),
decoded (a truncated or corrupt file is refused) and digested (the score cache keys the bytes'
digest, cache.py). Decoding runs in a worker thread, never on the event loop.

Every refusal is a RerankError naming the field, the limit and the setting that sets it.
Pillow is imported only when a request carries an image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass, replace
from typing import Any, Sequence
from urllib.parse import urlsplit

import anyio

from .errors import ErrorKind, RerankError

__all__ = ["ImagePolicy", "MediaDocument", "Picture", "count_images", "has_media", "resolve"]

# Formats a picture may be in. Pillow opens more (EPS runs Ghostscript, some parse whole
# containers): only these common raster formats are handed to it.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True, slots=True, eq=False)
class Picture:
    """An image as sent (``source``), and once resolved its bytes' digest and decoded RGB picture."""

    source: str
    digest: bytes = b""  # BLAKE2b-128 of the image bytes (the score cache's key part)
    image: Any = None  # PIL.Image.Image in RGB, once resolved
    size: int = 0  # bytes


@dataclass(frozen=True, slots=True, eq=False)
class MediaDocument:
    """A query or document that holds an image (and possibly text beside it)."""

    picture: Picture
    text: str = ""
    sent: Any = None  # what the client sent, returned as is by return_documents


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePolicy:
    """The limits images pass (RERANKER_IMAGE_* / RERANKER_MAX_IMAGES)."""

    max_images: int
    max_bytes: int
    max_pixels: int
    url_allowlist: tuple[str, ...] = ()
    fetch_timeout: float = 10.0

    @classmethod
    def of(cls, settings: Any) -> ImagePolicy:
        return cls(max_images=settings.max_images, max_bytes=settings.image_max_bytes,
                   max_pixels=settings.image_max_pixels, url_allowlist=tuple(settings.image_url_allowlist),
                   fetch_timeout=settings.image_fetch_timeout)

    def allows(self, host: str) -> bool:
        """Whether URLs on ``host`` may be fetched: listed exactly, or under a listed ``*.domain``."""
        host = host.lower().rstrip(".")
        for entry in self.url_allowlist:
            entry = entry.strip("[]")  # an IPv6 address as listed; urlsplit gives it bare
            if entry == "*" or host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
                return True
        return False


def has_media(query: Any, documents: Sequence[Any]) -> bool:
    return isinstance(query, MediaDocument) or any(isinstance(d, MediaDocument) for d in documents)


def count_images(query: Any, documents: Sequence[Any]) -> int:
    return isinstance(query, MediaDocument) + sum(isinstance(d, MediaDocument) for d in documents)


def _invalid(message: str) -> RerankError:
    return RerankError(ErrorKind.VALIDATION, message)


def _too_large(message: str) -> RerankError:
    return RerankError(ErrorKind.PAYLOAD_TOO_LARGE, message)


def _base64(text: str, where: str) -> bytes:
    try:
        # validate=True: a stray character is an error, not silently skipped.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}: the image is neither valid base64, a data: URL nor an http(s) URL; send the "
                       "image file's bytes base64-encoded (optionally as data:image/png;base64,...)") from None


def _data_url(source: str, where: str) -> bytes:
    header, comma, payload = source.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _invalid(f"{where}: a data: URL image must be base64-encoded (data:image/png;base64,...)")
    return _base64(payload, where)


async def _fetch(url: str, where: str, policy: ImagePolicy) -> bytes:
    """GET an allow-listed URL: no redirects (one could lead anywhere), ``fetch_timeout`` for the
    whole transfer, and no more than ``max_bytes`` read."""
    import httpx

    parts = urlsplit(url)
    host = parts.hostname or ""
    if not policy.url_allowlist:
        raise _invalid(f"{where}: image URLs are not fetched by this server (RERANKER_IMAGE_URL_ALLOWLIST is empty); "
                       "send the image base64-encoded, or ask the operator to allow the host")
    if not policy.allows(host):
        raise _invalid(f"{where}: images from host {host!r} are not fetched (not in RERANKER_IMAGE_URL_ALLOWLIST); "
                       "send the image base64-encoded, or ask the operator to allow the host")
    chunks, size = [], 0
    try:
        with anyio.fail_after(policy.fetch_timeout):
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
                async with client.stream("GET", url, timeout=policy.fetch_timeout) as response:
                    if response.status_code != 200:
                        raise _invalid(f"{where}: fetching the image URL answered HTTP {response.status_code} "
                                       "(redirects are not followed); send a URL that serves the image itself")
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise _too_large(f"{where}: the image URL serves more than {policy.max_bytes} bytes "
                                             "(RERANKER_IMAGE_MAX_BYTES); send a smaller image")
                        chunks.append(chunk)
    except TimeoutError:
        raise _invalid(f"{where}: the image URL did not deliver within {policy.fetch_timeout:g} s "
                       "(RERANKER_IMAGE_FETCH_TIMEOUT); send the image base64-encoded") from None
    except httpx.HTTPError as exc:
        raise _invalid(f"{where}: the image URL could not be fetched ({type(exc).__name__}); send the image "
                       "base64-encoded") from None
    return b"".join(chunks)


async def _bytes_of(source: str, where: str, policy: ImagePolicy) -> bytes:
    text = source.strip()
    scheme = text[:8].lower()
    if scheme.startswith("data:"):
        data = _data_url(text, where)
    elif scheme.startswith(("http://", "https://")):
        data = await _fetch(text, where, policy)
    else:
        # base64 is 4/3 of the bytes: refuse an oversized one before decoding it.
        if len(text) > policy.max_bytes * 4 // 3 + 4:
            raise _too_large(f"{where}: the image is larger than {policy.max_bytes} bytes "
                             "(RERANKER_IMAGE_MAX_BYTES); send a smaller image")
        data = _base64(text, where)
    if len(data) > policy.max_bytes:
        raise _too_large(f"{where}: the image is {len(data)} bytes, more than {policy.max_bytes} "
                         "(RERANKER_IMAGE_MAX_BYTES); send a smaller image")
    if not data:
        raise _invalid(f"{where}: the image is empty")
    return data


def decode(data: bytes, where: str, *, max_pixels: int) -> Any:
    """The RGB picture in ``data``; its size is read from the header and checked first."""
    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow's own bomb check (twice Image.MAX_IMAGE_PIXELS) runs in open() on the header;
        # ours, below, is the operator's limit. Neither decodes a pixel.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise _too_large(f"{where}: the image's header declares more pixels than {max_pixels} "
                         "(RERANKER_IMAGE_MAX_PIXELS); send a smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _invalid(f"{where}: the image is not a readable {', '.join(FORMATS)} file; send the file's bytes "
                       "unchanged") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(f"{where}: the image is {width} x {height} = {width * height} pixels, more than "
                         f"{max_pixels} (RERANKER_IMAGE_MAX_PIXELS); send a smaller image")
    if width < 1 or height < 1:
        raise _invalid(f"{where}: the image has no pixels ({width} x {height})")
    try:
        image.load()  # a truncated or corrupt file fails here (LOAD_TRUNCATED_IMAGES stays off)
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _invalid(f"{where}: the image could not be decoded ({str(exc) or type(exc).__name__}): it is truncated "
                       "or corrupt; send the whole file") from None


async def _resolve_one(item: MediaDocument, where: str, policy: ImagePolicy) -> MediaDocument:
    data = await _bytes_of(item.picture.source, where, policy)
    image = await anyio.to_thread.run_sync(lambda: decode(data, where, max_pixels=policy.max_pixels))
    digest = hashlib.blake2b(data, digest_size=16).digest()
    return replace(item, picture=replace(item.picture, digest=digest, image=image, size=len(data)))


async def resolve(query: Any, documents: Sequence[Any], *, policy: ImagePolicy, multimodal: bool, model: str,
                  family: str) -> tuple[Any, list[Any]]:
    """The request's query and documents with every picture fetched, checked and decoded."""
    images = count_images(query, documents)
    if not images:
        return query, list(documents)
    if not multimodal:
        first = "query" if isinstance(query, MediaDocument) else next(
            f"documents[{i}]" for i, d in enumerate(documents) if isinstance(d, MediaDocument))
        raise _invalid(f"{first} is an image, and model {model!r} ({family} reranker) ranks text only: send text, "
                       "or serve a multimodal reranker (Qwen3-VL-Reranker, jina-reranker-m0)")
    if images > policy.max_images:
        raise _too_large(f"the request holds {images} images, more than the {policy.max_images} one request may "
                         "hold (RERANKER_MAX_IMAGES); send fewer image documents per request")
    if isinstance(query, MediaDocument):
        query = await _resolve_one(query, "query", policy)
    out = list(documents)
    for i, doc in enumerate(out):
        if isinstance(doc, MediaDocument):
            out[i] = await _resolve_one(doc, f"documents[{i}]", policy)
    return query, out

