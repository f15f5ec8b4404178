"""StablecogHook: turns an Airflow connection of type ``stablecog`` into a :class:`StablecogClient`.

The connection:

* **password**: the API key (``sc-`` + 64 hex characters); masked in logs as soon as it is read.
* **host**: the base URL, default ``https://api.stablecog.com``. Plain ``http://`` is accepted for
  loopback hosts only (the embedded emulator); anything else must be https.
* **extra** (all optional): ``timeout`` (read timeout, s, default 300 — the server may hold an
  upscale for 240 s), ``connect_timeout`` (s, default 10), ``plan_concurrency`` (parallel
  upscales your plan allows: free 1, starter 2, pro 3, ultimate 4; default 1), ``rate_limit``
  (requests/s for one task, default 8), ``max_retries`` (retries of transient errors, default 5),
  ``retry_backoff`` (first backoff in seconds, doubled each retry, default 1).

Module import is cheap: requests, httpx and tenacity are imported when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_stablecog.client import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RATE_LIMIT,
    DEFAULT_READ_TIMEOUT,
    USER_AGENT,
)
from airflow_provider_stablecog.exceptions import StablecogConfigError, error_from_response
from airflow_provider_stablecog.utils.urls import is_loopback_host

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from airflow.sdk import Connection

    from airflow_provider_stablecog.client import StablecogClient
    from airflow_provider_stablecog.models import (
        Credits,
        GenerationOutput,
        GenerationOutputsPage,
        UpscaleModel,
        UpscaleResult,
    )

DEFAULT_PLAN_CONCURRENCY = 1
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 1.0


def _number(extra: dict[str, Any], key: str, default: float, conn_id: str, *, minimum: float = 0) -> float:
    value = extra.get(key)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StablecogConfigError(
            f"Connection {conn_id!r}: extra {key!r} must be a number, got {value!r}"
        ) from None
    if number < minimum:
        raise StablecogConfigError(f"Connection {conn_id!r}: extra {key!r} must be >= {minimum}, got {value!r}")
    return number


@dataclass(frozen=True)
class StablecogConnectionSettings:
    """What the hook reads from a connection; ``api_key`` is kept out of ``repr``."""

    conn_id: str
    base_url: str
    api_key: str
    connect_timeout: float
    read_timeout: float
    plan_concurrency: int
    rate_limit: float | None
    max_retries: int
    retry_backoff: float

    def __repr__(self) -> str:
        return f"StablecogConnectionSettings(conn_id={self.conn_id!r}, base_url={self.base_url!r}, ...)"

    @classmethod
    def from_connection(cls, conn: Connection) -> StablecogConnectionSettings:
        conn_id = conn.conn_id or "stablecog"
        if not conn.password:
            raise StablecogConfigError(
                f"Connection {conn_id!r} has no API key: put your sc-... key in its password field "
                "(or 'password' in the AIRFLOW_CONN_ JSON)",
                code="missing_api_key",
            )
        extra = conn.extra_dejson or {}
        rate = _number(extra, "rate_limit", DEFAULT_RATE_LIMIT, conn_id)
        return cls(
            conn_id=conn_id,
            base_url=_base_url(conn, conn_id),
            api_key=conn.password,
            connect_timeout=_number(extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, conn_id, minimum=0.1),
            read_timeout=_number(extra, "timeout", DEFAULT_READ_TIMEOUT, conn_id, minimum=0.1),
            plan_concurrency=int(_number(extra, "plan_concurrency", DEFAULT_PLAN_CONCURRENCY, conn_id, minimum=1)),
            rate_limit=rate or None,
            max_retries=int(_number(extra, "max_retries", DEFAULT_MAX_RETRIES, conn_id)),
            retry_backoff=_number(extra, "retry_backoff", DEFAULT_RETRY_BACKOFF, conn_id),
        )


def _base_url(conn: Connection, conn_id: str) -> str:
    """host (a URL, or a bare host name with ``port``/``extra.scheme``) → ``scheme://host[:port]``."""
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        scheme = (conn.extra_dejson or {}).get("scheme") or "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StablecogConfigError(
            f"Connection {conn_id!r}: host must be a base URL such as {DEFAULT_BASE_URL}, got {host!r}"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise StablecogConfigError(
            f"Connection {conn_id!r}: plain http:// is only allowed for loopback hosts (the local "
            f"emulator); use https:// for {parts.hostname!r} so the API key is not sent in clear text"
        )
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


class StablecogHook(BaseHook):
    """Interact with the Stablecog API through an Airflow connection.

    :param stablecog_conn_id: the connection (type ``stablecog``), default ``stablecog_default``.
    :param pool_size: connections to keep open (default: the plan concurrency + 2).
    :param rate_limit: requests/s override for this hook's client (default: the connection's).
    :param timeout: read timeout override in seconds (default: the connection's).
    :param max_retries: retries of transient errors override (default: the connection's); a
        sensor that polls anyway passes 0 so one poke stays one check.
    """

    conn_name_attr = "stablecog_conn_id"
    default_conn_name = "stablecog_default"
    conn_type = "stablecog"
    hook_name = "Stablecog"

    def __init__(
        self,
        stablecog_conn_id: str = default_conn_name,
        *,
        pool_size: int | None = None,
        rate_limit: float | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stablecog_conn_id = stablecog_conn_id
        self._pool_size = pool_size
        self._rate_limit = rate_limit
        self._timeout = timeout
        self._max_retries = max_retries

    # -- connection → client -------------------------------------------------------------------

    @cached_property
    def settings(self) -> StablecogConnectionSettings:
        """The connection's settings (the key is masked in logs from here on)."""
        settings = StablecogConnectionSettings.from_connection(self.get_connection(self.stablecog_conn_id))
        _mask(settings.api_key)
        return settings

    @cached_property
    def client(self) -> StablecogClient:
        """One client (one connection pool) per hook, shared by the hook's threads."""
        return self._make_client(self.settings)

    def _make_client(self, settings: StablecogConnectionSettings) -> StablecogClient:
        from airflow_provider_stablecog.client import RetryPolicy, StablecogClient

        return StablecogClient(
            settings.api_key,
            settings.base_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=self._timeout or settings.read_timeout,
            pool_size=self._pool_size or settings.plan_concurrency + 2,
            rate_limit=self._rate_limit if self._rate_limit is not None else settings.rate_limit,
            retry=RetryPolicy(
                max_attempts=(settings.max_retries if self._max_retries is None else self._max_retries) + 1,
                initial_backoff=settings.retry_backoff,
                jitter=settings.retry_backoff,
            ),
        )

    def get_conn(self) -> StablecogClient:
        return self.client

    @property
    def plan_concurrency(self) -> int:
        return self.settings.plan_concurrency

    def test_connection(self) -> tuple[bool, str]:
        """Call ``/v1/credits`` with the connection's key; used by the UI's Test button."""
        from airflow_provider_stablecog.exceptions import StablecogError

        try:
            credits = self.get_credits()
        except StablecogError as exc:
            return False, str(exc)
        return True, f"Connected: {credits.total_remaining_credits:,} credits remaining"

    # -- thin delegates --------------------------------------------------------------------------

    def upscale(self, input: str, model_id: str | None = None) -> UpscaleResult:
        return self.client.upscale(input, model_id=model_id)

    def get_credits(self) -> Credits:
        return self.client.get_credits()

    def list_upscale_models(self) -> list[UpscaleModel]:
        return self.client.list_upscale_models()

    def get_upscale_defaults(self) -> str:
        return self.client.get_upscale_defaults()

    def upload_image(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return self.client.upload_image(source, filename=filename, content_type=content_type)

    def list_generation_outputs(self, **kwargs: Any) -> GenerationOutputsPage:
        return self.client.list_generation_outputs(**kwargs)

    def iter_generation_outputs(self, **kwargs: Any) -> Iterator[GenerationOutput]:
        return self.client.iter_generation_outputs(**kwargs)

    def health(self) -> bool:
        return self.client.health()

    # -- async (triggers) -----------------------------------------------------------------------

    async def aget_settings(self) -> StablecogConnectionSettings:
        conn = await self.aget_connection(self.stablecog_conn_id)
        settings = StablecogConnectionSettings.from_connection(conn)
        _mask(settings.api_key)
        return settings

    async def aget_credits(self) -> Credits:
        """``GET /v1/credits`` with httpx, for triggers (never blocks the event loop)."""
        import httpx

        from airflow_provider_stablecog.exceptions import StablecogConnectionError
        from airflow_provider_stablecog.models import Credits

        settings = await self.aget_settings()
        timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                response = await http.get(
                    f"{settings.base_url}/v1/credits",
                    headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": USER_AGENT},
                )
        except httpx.HTTPError as exc:
            raise StablecogConnectionError(
                f"credits: connection_error: {type(exc).__name__}: could not reach {settings.base_url}"
            ) from None
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.headers, response.text, context="credits")
        return Credits.from_json(response.json())


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)
