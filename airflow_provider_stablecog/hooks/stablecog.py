"""StablecogHook: turns an Airflow connection of type ``stablecog`` into a :class:`StablecogClient`.

The connection:

* **password** (the form's "API key"): the key (``sc-`` + 64 hex characters); masked in logs as
  soon as it is read.
* **host** (the form's "Base URL"): the whole base URL, e.g. ``http://127.0.0.1:8765`` for the
  emulator; empty means ``https://api.stablecog.com``. Plain ``http://`` is accepted for loopback
  hosts only (the embedded emulator); anything else must be https. Older forms are still read: a
  bare host name (https), ``port`` in the port field, ``scheme`` in the extra.
* **extra** (all optional; a missing, null or empty value means the default): ``timeout`` (read
  timeout, s, default ``client.DEFAULT_READ_TIMEOUT``, longer than the server may hold an
  upscale open), ``connect_timeout`` (s, default 10), ``plan_concurrency`` (parallel upscales your plan allows: free 1, starter 2, pro 3,
  ultimate 4; default 1), ``rate_limit`` (requests/s for one task, default 8), ``max_retries``
  (retries of transient errors, default 5), ``retry_backoff`` (first backoff in seconds, doubled
  each retry, default 1).

Every call goes through one :class:`~airflow_provider_stablecog.client.StablecogClient`
(requests), also from async code: :meth:`StablecogHook.aget_credits` runs it in a worker thread
(``asyncio.to_thread``), so sync and async callers see the same answers and the same error
classes. Module import is cheap: requests and tenacity are imported when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_stablecog.client import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RATE_LIMIT,
    DEFAULT_READ_TIMEOUT,
)
from airflow_provider_stablecog.exceptions import StablecogConfigError
from airflow_provider_stablecog.hooks import DEFAULT_CONN_ID
from airflow_provider_stablecog.utils.urls import is_loopback_host, redact_url

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from airflow.sdk import Connection

    from airflow_provider_stablecog.client import StablecogClient
    from airflow_provider_stablecog.models import (
        Credits,
        GenerationDefaults,
        GenerationModel,
        GenerationOutput,
        GenerationOutputsPage,
        GenerationResult,
        UpscaleModel,
        UpscaleResult,
    )

# A free plan's concurrency. Too low only costs speed; too high makes the server hold requests
# open (up to its 240 s TIMEOUT) and fills its queue. Set the extra to your plan.
DEFAULT_PLAN_CONCURRENCY = 1
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 1.0
# test_connection (the UI's Test button, `airflow connections test`) answers within this.
TEST_CONNECTION_TIMEOUT = 10.0

CreditsErrorKind = Literal["fatal", "transient", "error"]


def _number(extra: dict[str, Any], key: str, default: float, where: str, *, minimum: float = 0) -> float:
    value = extra.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StablecogConfigError(f"{where}: extra {key!r} must be a number, got {value!r}") from None
    if number != number or number < minimum:  # NaN, or below the minimum
        raise StablecogConfigError(f"{where}: extra {key!r} must be >= {minimum}, got {value!r}")
    return number


def _where(conn_id: str | None) -> str:
    return f"Connection {conn_id!r}" if conn_id else "The connection"


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
    def from_connection(
        cls, conn: Connection, *, name_in_messages: bool = True
    ) -> StablecogConnectionSettings:
        """Read and check ``conn``.

        :param name_in_messages: quote the connection id in error messages. The UI's Test button
            tests a copy under a random id, so :meth:`StablecogHook.test_connection` says "the
            connection" instead.
        :raises StablecogConfigError: no API key, a bad base URL or a bad extra.
        """
        conn_id = conn.conn_id or "stablecog"
        where = _where(conn_id if name_in_messages else None)
        if not conn.password:
            raise StablecogConfigError(
                f"{where} has no API key: enter your sc-... key in the 'API key' field of the "
                "Stablecog connection form (the connection's password; 'password' in an "
                "AIRFLOW_CONN_ JSON, --conn-password for `airflow connections add`)",
                code="missing_api_key",
            )
        extra = conn.extra_dejson or {}
        rate = _number(extra, "rate_limit", DEFAULT_RATE_LIMIT, where)
        return cls(
            conn_id=conn_id,
            base_url=_base_url(conn, where),
            api_key=conn.password,
            connect_timeout=_number(extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, where, minimum=0.1),
            read_timeout=_number(extra, "timeout", DEFAULT_READ_TIMEOUT, where, minimum=0.1),
            plan_concurrency=int(
                _number(extra, "plan_concurrency", DEFAULT_PLAN_CONCURRENCY, where, minimum=1)
            ),
            rate_limit=rate or None,
            max_retries=int(_number(extra, "max_retries", DEFAULT_MAX_RETRIES, where)),
            retry_backoff=_number(extra, "retry_backoff", DEFAULT_RETRY_BACKOFF, where),
        )


def _base_url(conn: Connection, where: str) -> str:
    """The connection's base URL, ``scheme://host[:port][/path]`` without a trailing slash.

    The one documented form is the whole URL in ``host`` (``http://127.0.0.1:8765``). Still
    accepted: a bare host name (``https`` unless ``extra.scheme`` says otherwise) and a port in
    the ``port`` field (what ``stablecog://:key@127.0.0.1:8765/?scheme=http`` parses into).
    """
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        scheme = (conn.extra_dejson or {}).get("scheme") or "https"
        host = f"{scheme}://{host}"
    shown = redact_url(host)
    try:
        parts = urlsplit(host)
        port = parts.port
    except ValueError:
        raise StablecogConfigError(
            f"{where}: the Base URL (host) must be a URL such as {DEFAULT_BASE_URL} or "
            f"http://127.0.0.1:8765, got {shown!r}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StablecogConfigError(
            f"{where}: the Base URL (host) must be a base URL such as {DEFAULT_BASE_URL} or "
            f"http://127.0.0.1:8765, got {shown!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise StablecogConfigError(
            f"{where}: the Base URL must not contain user:password@ (got {shown!r}); the API key "
            "goes in the 'API key' field"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise StablecogConfigError(
            f"{where}: plain http:// is only allowed for loopback hosts (the local "
            f"emulator); use https:// for {parts.hostname!r} so the API key is not sent in clear text"
        )
    netloc = parts.netloc
    if conn.port and port is None:
        netloc = f"{netloc}:{conn.port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def classify_credits_error(exc: BaseException) -> CreditsErrorKind:
    """How a failed credits check should end, shared by the sensor (poke) and the trigger.

    * ``"fatal"``: the key was rejected (401/403) or the connection is unusable; waiting will not
      fix it, fail without retries.
    * ``"transient"``: 429, 5xx, TIMEOUT, a connection error or an answer that was not JSON (a
      proxy in the way); check again at the next poll.
    * ``"error"``: anything else (an unknown answer such as a 404, an unexpected exception); the
      task fails and Airflow's task retries apply.
    """
    from airflow_provider_stablecog.exceptions import StablecogAuthError, is_retryable

    if isinstance(exc, (StablecogAuthError, StablecogConfigError)):
        return "fatal"
    if is_retryable(exc):
        return "transient"
    return "error"


class StablecogHook(BaseHook):
    """Interact with the Stablecog API through an Airflow connection.

    :param stablecog_conn_id: the connection (type ``stablecog``), default ``stablecog_default``.
    :param pool_size: HTTP connections the client keeps open; at least the number of threads that
        share the hook's client (default: the plan concurrency + 2).
    :param rate_limit: requests/s override for this hook's client (default: the connection's).
    :param timeout: read timeout override in seconds (default: the connection's).
    :param max_retries: retries of transient errors override (default: the connection's); a
        sensor or trigger that polls anyway passes 0 so one check stays one request.
    :param rate_limit_budget: seconds a call may keep waiting out 429s, which spend no retry
        (default: the client's); a poller passes 0 so a 429 ends the check (and its Retry-After
        delays the next one).
    """

    conn_name_attr = "stablecog_conn_id"
    default_conn_name = DEFAULT_CONN_ID
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
        rate_limit_budget: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pool_size is not None and (
            isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1
        ):
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
        ):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.stablecog_conn_id = stablecog_conn_id
        self._pool_size = pool_size
        self._rate_limit = rate_limit
        self._timeout = timeout
        self._max_retries = max_retries
        self._rate_limit_budget = rate_limit_budget

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

    @property
    def pool_size(self) -> int:
        """The connection pool size the hook's client gets (the ``pool_size`` argument or plan + 2).

        May be set until :attr:`client` is first used, e.g. once the plan concurrency is known::

            hook.pool_size = hook.plan_concurrency + 4
        """
        if "client" in self.__dict__:
            return self.client.pool_size
        return self._pool_size or self.settings.plan_concurrency + 2

    @pool_size.setter
    def pool_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {value!r}")
        if "client" in self.__dict__:
            raise RuntimeError(
                "StablecogHook.pool_size must be set before the hook's client is first used; "
                "pass pool_size= to StablecogHook() or set it earlier"
            )
        self._pool_size = value

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
                **({} if self._rate_limit_budget is None else {"rate_limit_budget": self._rate_limit_budget}),
            ),
        )

    def get_conn(self) -> StablecogClient:
        return self.client

    @property
    def plan_concurrency(self) -> int:
        return self.settings.plan_concurrency

    def test_connection(self) -> tuple[bool, str]:
        """One ``GET /v1/credits`` with the connection's key: the UI's Test button and
        ``airflow connections test``.

        Answers within ~10 s (:data:`TEST_CONNECTION_TIMEOUT`), without retries, and says what
        is wrong: DNS, connection refused, timeout, TLS, a rejected key, an answer that is not the
        Stablecog API. Messages say "the connection" rather than an id: the UI tests a copy of the
        form under a random id.
        """
        import threading

        from airflow_provider_stablecog.client import RetryPolicy, StablecogClient

        try:
            settings = StablecogConnectionSettings.from_connection(
                self.get_connection(self.stablecog_conn_id), name_in_messages=False
            )
        except StablecogConfigError as exc:
            return False, str(exc)
        _mask(settings.api_key)
        deadline = TEST_CONNECTION_TIMEOUT
        client = StablecogClient(
            settings.api_key,
            settings.base_url,
            connect_timeout=min(settings.connect_timeout, deadline / 2),
            read_timeout=min(settings.read_timeout, deadline),
            pool_size=1,
            rate_limit=None,
            retry=RetryPolicy.none(),
        )
        outcome: dict[str, Any] = {}

        def check() -> None:
            try:
                outcome["credits"] = client.get_credits()
            except Exception as exc:  # reported below; nothing may escape the thread
                outcome["error"] = exc

        # requests bounds connect and read, not the DNS lookup: a thread bounds the whole check
        thread = threading.Thread(target=check, name="stablecog-test-connection", daemon=True)
        thread.start()
        thread.join(deadline)
        shown = redact_url(settings.base_url)
        if thread.is_alive():
            client.cancel()
            client.close()  # aborts a request in flight; a hanging name lookup ends by itself
            return False, (
                f"No answer from {shown} within {deadline:.0f} s (the name lookup or the connection "
                "hangs): check the Base URL and that this machine can reach it"
            )
        client.close()
        if "error" in outcome:
            return False, _explain_test_failure(outcome["error"], shown, client.timeout)
        return True, f"Connected to {shown}: {outcome['credits'].total_remaining_credits:,} credits remaining"

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

    def generate(self, prompt: str, **kwargs: Any) -> GenerationResult:
        """``POST /v1/image/generation/create`` (see :meth:`StablecogClient.generate`)."""
        return self.client.generate(prompt, **kwargs)

    def list_generation_models(self) -> list[GenerationModel]:
        return self.client.list_generation_models()

    def get_generation_defaults(self) -> GenerationDefaults:
        return self.client.get_generation_defaults()

    def find_generation_outputs(self, **kwargs: Any) -> list[list[GenerationOutput]]:
        return self.client.find_generation_outputs(**kwargs)

    def list_generation_outputs(self, **kwargs: Any) -> GenerationOutputsPage:
        return self.client.list_generation_outputs(**kwargs)

    def iter_generation_outputs(self, **kwargs: Any) -> Iterator[GenerationOutput]:
        return self.client.iter_generation_outputs(**kwargs)

    def health(self) -> bool:
        return self.client.health()

    # -- async (triggers) -----------------------------------------------------------------------

    async def aget_settings(self) -> StablecogConnectionSettings:
        """The connection's settings, read with Airflow's async connection lookup."""
        if "settings" not in self.__dict__:
            conn = await self.aget_connection(self.stablecog_conn_id)
            settings = StablecogConnectionSettings.from_connection(conn)
            _mask(settings.api_key)
            self.__dict__.setdefault("settings", settings)  # what ``self.settings`` would return
        return self.settings

    async def aget_client(self) -> StablecogClient:
        """The hook's client, for async callers: the connection is read asynchronously and the
        client is built off the event loop (its first use imports requests)."""
        import asyncio

        if "client" not in self.__dict__:
            settings = await self.aget_settings()
            client = await asyncio.to_thread(self._make_client, settings)
            self.__dict__.setdefault("client", client)
        return self.client

    async def aget_credits(self) -> Credits:
        """``GET /v1/credits`` for triggers, through the same client (and the same error classes)
        as :meth:`get_credits`, run in a worker thread so the event loop is never blocked."""
        import asyncio

        client = await self.aget_client()
        return await asyncio.to_thread(client.get_credits)


def _explain_test_failure(exc: BaseException, base_url: str, timeout: tuple[float, float]) -> str:
    """A test_connection failure in words: what went wrong and what to check."""
    from airflow_provider_stablecog.exceptions import (
        StablecogAuthError,
        StablecogConnectionError,
        StablecogError,
        explain,
    )

    if isinstance(exc, StablecogAuthError):
        if exc.status_code == 403:
            return f"{base_url} refused this account (403 {exc.code}): {explain(exc.code)}"
        return (
            f"{base_url} rejected the API key (401 Unauthorized): enter a valid sc-... key in the "
            "'API key' field"
        )
    if isinstance(exc, StablecogConnectionError):
        if exc.code == "invalid_response":
            return (
                f"{base_url} answered HTTP {exc.status_code} but not with JSON: the Base URL does not "
                "point at the Stablecog API (a web page or a proxy answered)"
            )
        return f"Could not talk to {base_url}: " + _transport_reason(exc, timeout)
    if isinstance(exc, StablecogError):
        if exc.status_code == 404:
            return (
                f"{base_url} has no /v1/credits (HTTP 404): the Base URL is not the Stablecog API "
                "root (e.g. https://api.stablecog.com or http://127.0.0.1:8765)"
            )
        return f"{base_url}: {exc}"
    return f"{base_url}: unexpected {type(exc).__name__}: {exc}"


def _transport_reason(exc: BaseException, timeout: tuple[float, float]) -> str:
    """The cause of a transport failure, from the exceptions the client's error was raised in."""
    import socket
    import ssl

    import requests

    chain = _exception_chain(exc)
    kinds = tuple(type(e) for e in chain)
    names = {cls.__name__ for kind in kinds for cls in kind.__mro__}
    if any(issubclass(t, (ssl.SSLError, requests.exceptions.SSLError)) for t in kinds) or "SSLError" in names:
        return (
            "the TLS handshake failed (certificate not trusted, or not a TLS server: is the scheme "
            "right? the emulator is http://)"
        )
    if any(issubclass(t, socket.gaierror) for t in kinds) or "NameResolutionError" in names:
        return "the host name could not be resolved (DNS): check the Base URL"
    if any(issubclass(t, ConnectionRefusedError) for t in kinds):
        return (
            "the connection was refused: nothing listens at that host and port (is the emulator "
            "running? is the port right?)"
        )
    if (
        any(issubclass(t, requests.exceptions.ConnectTimeout) for t in kinds)
        or "ConnectTimeoutError" in names
    ):
        return f"no connection within {timeout[0]:g} s (timeout): a firewall, or a wrong address"
    if any(issubclass(t, requests.exceptions.ReadTimeout) for t in kinds) or "ReadTimeoutError" in names:
        return f"connected, but no answer within {timeout[1]:g} s (timeout)"
    if any(issubclass(t, (ConnectionResetError, ConnectionAbortedError)) for t in kinds):
        return "the connection was reset by the other side: is the Base URL's scheme right (http/https)?"
    return str(exc)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it was raised from or in (``__cause__``, ``__context__``, urllib3's
    ``reason``, exception arguments), breadth first, each once."""
    seen: list[BaseException] = []
    queue: list[Any] = [exc]
    while queue and len(seen) < 32:
        item = queue.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        queue.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return seen


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)
