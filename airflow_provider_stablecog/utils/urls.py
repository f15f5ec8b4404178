"""URL helpers: redaction of credentials before anything is logged, and loopback checks."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

_MAX_SHOWN = 160


# Query parameters that carry credentials: presigned S3/GCS URLs, Azure SAS, API tokens.
_SECRET_PARAM = re.compile(
    r"(sig|signature|token|key|secret|password|passwd|pwd|auth|credential|session|policy|"
    r"^x-amz-|^x-goog-|^se$|^sp$|^sv$|^sr$|^st$|^skoid$|^sktid$)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` safe to log: user info and credential-like query values replaced by ``***``.

    Presigned object-storage URLs carry their credentials in the query string
    (``X-Amz-Signature=...``, ``X-Goog-Credential=...``, Azure ``sig=...``) and some URLs carry
    ``user:password@``; neither may reach a log. Ordinary parameters (``?size=2``) are kept.
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
        query = "&".join(_redact_pair(pair) for pair in query.split("&"))
    return _shorten(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


def _redact_pair(pair: str) -> str:
    name, sep, _value = pair.partition("=")
    return f"{name}=***" if sep and _SECRET_PARAM.search(name) else pair


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 20] + "…" + text[-19:]


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
