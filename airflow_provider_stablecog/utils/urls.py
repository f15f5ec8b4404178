"""URL helpers: redaction of credentials before anything is logged, and loopback checks."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

_MAX_SHOWN = 160


def redact_url(url: str) -> str:
    """``url`` safe to log: user info and every query value replaced by ``***``.

    Presigned object-storage URLs carry their credentials in the query string
    (``X-Amz-Signature=...``) and some URLs carry ``user:password@``; neither may reach a log.
    Anything that does not parse as a URL is returned shortened but otherwise unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _shorten(url)
    if not parts.scheme or not parts.netloc:
        return _shorten(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        query = "&".join(
            f"{pair.split('=', 1)[0]}=***" if "=" in pair else "***" for pair in query.split("&")
        )
    return _shorten(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 20] + "…" + text[-19:]


def has_credentials(url: str) -> bool:
    """True when ``url`` has user info or a query string (which may hold a signature)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc or bool(parts.query)


def is_loopback_host(host: str | None) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
