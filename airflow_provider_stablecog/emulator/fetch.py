"""Fetch an input image URL the way the Stablecog server does (HEAD, then GET)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

ALLOWED_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


class FetchFailed(Exception):
    """The URL did not give an acceptable image (the server answers image_url_width_height_error)."""


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (empty for junk)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}".lower()


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    self_app: Any = None,
    self_origins: Iterable[str] = (),
) -> bytes:
    """HEAD must be 200 with Content-Length, GET 200 with an image Content-Type; return the bytes.

    URLs on one of ``self_origins`` are answered in-process by ``self_app`` (the emulator's
    own sample and output images), so they also work under an in-process test client.
    """
    transport = None
    if self_app is not None and origin_of(url) in {o.rstrip("/").lower() for o in self_origins}:
        transport = httpx.ASGITransport(app=self_app, client=("127.0.0.1", 0))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=True) as client:
            await _check_head(client, url, max_bytes)
            return await _get_body(client, url, max_bytes)
    except httpx.HTTPError as exc:
        raise FetchFailed(f"fetching {url} failed: {exc!r}") from exc
    except (ValueError, TypeError) as exc:
        raise FetchFailed(f"bad URL {url!r}: {exc}") from exc


async def _check_head(client: httpx.AsyncClient, url: str, max_bytes: int) -> None:
    response = await client.head(url)
    if response.status_code != 200:
        raise FetchFailed(f"HEAD {url} answered {response.status_code}")
    length = response.headers.get("content-length")
    if length is None or not length.strip().isdigit():
        raise FetchFailed(f"HEAD {url} gave no Content-Length")
    if int(length) > max_bytes:
        raise FetchFailed(f"{url} is {length} bytes, more than {max_bytes}")


async def _get_body(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise FetchFailed(f"GET {url} answered {response.status_code}")
        content_type = response.headers.get("content-type", "")
        if content_type not in ALLOWED_CONTENT_TYPES:
            raise FetchFailed(f"GET {url} has Content-Type {content_type!r}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchFailed(f"{url} is more than {max_bytes} bytes")
    return bytes(body)
