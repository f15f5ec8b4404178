"""A plain client for the Stablecog API: requests, typed results, classified errors, retries.

Nothing here imports Airflow, so the client can be used (and tested) on its own::

    from airflow_provider_stablecog.client import StablecogClient

    with StablecogClient(api_key="sc-...") as client:
        result = client.upscale("https://example.com/cat.png")
        print(result.upscaled_image_url, result.remaining_credits)

One :class:`requests.Session` carries every call, with a connection pool sized for the caller's
concurrency. Threads may share one client (the UpscaleOperator does): the only shared mutable
state is the session's pool (urllib3's pool is thread-safe), the rate limiter (locked) and the
cancel event. The API key is sent per request to API routes only, never to image hosts.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_stablecog.exceptions import (
    CancelledError,
    RateLimitError,
    StablecogConfigError,
    StablecogConnectionError,
    StablecogError,
    StablecogInputError,
    error_from_response,
    is_retryable,
)
from airflow_provider_stablecog.models import (
    Credits,
    GenerationOutput,
    GenerationOutputsPage,
    UpscaleModel,
    UpscaleResult,
)
from airflow_provider_stablecog.utils.urls import redact_url

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.stablecog.com"
DEFAULT_CONNECT_TIMEOUT = 10.0
# The server may hold an upscale open for 240 s before it answers TIMEOUT: wait longer than that.
DEFAULT_READ_TIMEOUT = 300.0
# Requests per second, shared by every call of one client. The server allows about 10/s per IP
# for create routes (nominal 5/s); staying under it keeps 429s rare.
DEFAULT_RATE_LIMIT = 8.0
DEFAULT_POOL_SIZE = 10
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Upscaled images are at most 4096x4096 JPEG; anything far larger is not an image we asked for.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
USER_AGENT = "airflow-provider-stablecog"

_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient errors only: exponential backoff with jitter, Retry-After honoured.

    Bounded by ``max_attempts`` (first try included) and ``max_elapsed`` seconds overall.
    """

    max_attempts: int = 6
    max_elapsed: float = 900.0
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    jitter: float = 1.0

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1)


class RateLimiter:
    """A token bucket shared by threads: at most ``rate`` acquisitions per second (burst ``burst``).

    ``pause(seconds)`` holds every caller back, e.g. after a 429 with Retry-After.
    """

    def __init__(self, rate: float | None, burst: float | None = None, *, clock=time.monotonic) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(1.0, burst if burst is not None else (self.rate or 1.0))
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def delay(self) -> float:
        """Take a token if one is free (returns 0), else return how long to wait before retrying."""
        with self._lock:
            now = self._clock()
            if now < self._paused_until:
                return self._paused_until - now
            if self.rate is None:
                return 0.0
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def acquire(self, cancel: threading.Event | None = None) -> None:
        while (wait := self.delay()) > 0:
            if cancel is not None and cancel.wait(wait):
                raise CancelledError("the batch was stopped; no new request is sent")
            if cancel is None:
                time.sleep(wait)


class _WaitRetryAfter:
    """tenacity wait: the server's Retry-After when it sent one, else exponential backoff + jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        import tenacity

        self._backoff = tenacity.wait_exponential_jitter(
            initial=policy.initial_backoff, max=policy.max_backoff, jitter=policy.jitter
        )

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return self._backoff(retry_state)


def _sniff_content_type(head: bytes, filename: str | None) -> str:
    for signature, ctype in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    guessed = mimetypes.guess_type(filename or "")[0]
    return guessed or "application/octet-stream"


class StablecogClient:
    """Client for the routes an API key can use. See the module docstring.

    :param api_key: the ``sc-...`` key (sent as ``Authorization: Bearer``).
    :param base_url: API root, default ``https://api.stablecog.com``.
    :param connect_timeout: seconds to open a connection.
    :param read_timeout: seconds to wait for an answer (must exceed the server's 240 s hold).
    :param pool_size: connections kept open; at least the number of threads sharing the client.
    :param rate_limit: requests per second for the whole client; ``None`` or 0 for no limit.
    :param retry: the retry policy for transient errors.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        pool_size: int = DEFAULT_POOL_SIZE,
        rate_limit: float | None = DEFAULT_RATE_LIMIT,
        retry: RetryPolicy | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.pool_size = max(1, int(pool_size))
        self.retry_policy = retry or RetryPolicy()
        self.rate_limiter = RateLimiter(rate_limit)
        self.user_agent = user_agent
        self.cancel_event = threading.Event()
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._make_session()
        return self._session

    def _make_session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = self.user_agent
        return session

    def cancel(self) -> None:
        """Stop: no new request is sent; waits for backoff or the rate limit end at once."""
        self.cancel_event.set()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> StablecogClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the one request path ------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if not self._api_key:
            raise StablecogConfigError(
                "No Stablecog API key: set the password field of the Stablecog connection to your "
                "sc-... key (see the README's Connection section)",
                code="missing_api_key",
            )
        return {"Authorization": f"Bearer {self._api_key}"}

    def _request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        retry: bool = True,
        context: str = "",
        **kwargs: Any,
    ) -> Any:
        """Send one API call (with retries for transient errors) and return its parsed JSON."""
        headers = {**kwargs.pop("headers", {}), **(self._auth_headers() if auth else {})}
        files = kwargs.get("files")

        def attempt() -> Any:
            if files is not None:  # a retried multipart upload must re-read its file from the start
                for part in files.values():
                    if hasattr(part[1], "seek"):
                        part[1].seek(0)
            return self._send(method, path, headers=headers, context=context, **kwargs)

        return self.call_with_retry(attempt) if retry else attempt()

    def call_with_retry(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under this client's retry policy (transient errors only)."""
        import tenacity

        policy = self.retry_policy
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            stop=(
                tenacity.stop_after_attempt(policy.max_attempts)
                | tenacity.stop_after_delay(policy.max_elapsed)
                | (lambda _state: self.cancel_event.is_set())
            ),
            wait=_WaitRetryAfter(policy),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(fn)

    def _sleep(self, seconds: float) -> None:
        if self.cancel_event.wait(seconds):
            raise CancelledError("the batch was stopped while waiting to retry")

    @staticmethod
    def _log_retry(retry_state) -> None:
        exc = retry_state.outcome.exception()
        log.warning(
            "Stablecog call failed (attempt %d): %s; retrying in %.1f s",
            retry_state.attempt_number,
            exc,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )

    def _send(self, method: str, path: str, *, headers: dict[str, str], context: str, **kwargs: Any) -> Any:
        import requests

        if self.cancel_event.is_set():
            raise CancelledError(f"{context or path}: the batch was stopped; the request was not sent")
        self.rate_limiter.acquire(self.cancel_event)
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            text = response.text
        except requests.RequestException as exc:
            # The exception text may contain the URL but never the headers; keep only its class.
            raise StablecogConnectionError(
                f"{context or method + ' ' + path}: connection_error: {type(exc).__name__} "
                f"talking to {redact_url(self.base_url)}: {explain_connection_error(exc)}",
            ) from None
        if response.status_code >= 400:
            error = error_from_response(response.status_code, response.headers, text, context=context or path)
            if isinstance(error, RateLimitError):
                self.rate_limiter.pause(error.retry_after if error.retry_after is not None else 1.0)
            raise error
        try:
            return response.json()
        except ValueError:
            raise StablecogConnectionError(
                f"{context or path}: the answer was not JSON (HTTP {response.status_code}); "
                "a proxy may be in the way",
                code="invalid_response",
                status_code=response.status_code,
            ) from None

    # -- routes ------------------------------------------------------------------------------

    def upscale(self, input: str, model_id: str | None = None) -> UpscaleResult:
        """``POST /v1/image/upscale/create``: upscale one image 4× (1 credit; synchronous)."""
        body: dict[str, str] = {"input": input}
        if model_id:
            body["model_id"] = model_id
        data = self._request(
            "POST", "/v1/image/upscale/create", json=body, context=f"upscale of {redact_url(input)!r}"
        )
        return UpscaleResult.from_json(data)

    def get_credits(self) -> Credits:
        """``GET /v1/credits``: the remaining credits of the key's account."""
        return Credits.from_json(self._request("GET", "/v1/credits", context="credits"))

    def list_upscale_models(self) -> list[UpscaleModel]:
        """``GET /v1/image/upscale/models`` (no auth)."""
        data = self._request("GET", "/v1/image/upscale/models", auth=False, context="upscale models")
        return [
            UpscaleModel(id=str(m["id"]), name=str(m.get("name", "")), is_default=bool(m.get("is_default")))
            for m in data.get("models") or ()
        ]

    def get_upscale_defaults(self) -> str:
        """``GET /v1/image/upscale/defaults`` (no auth): the default upscale model ID."""
        data = self._request("GET", "/v1/image/upscale/defaults", auth=False, context="upscale defaults")
        return str(data["model_id"])

    def upload_image(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """``POST /v1/image/upload``: upload a local file, bytes or a binary file object.

        :return: the ``s3://...`` key, usable as an upscale input.
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            with path.open("rb") as fh:
                return self.upload_image(fh, filename=filename or path.name, content_type=content_type)
        fileobj: IO[bytes]
        if isinstance(source, (bytes, bytearray)):
            import io

            fileobj = io.BytesIO(bytes(source))
        else:
            fileobj = source
        name = filename or "image"
        head = fileobj.read(16)
        fileobj.seek(0)
        ctype = content_type or _sniff_content_type(head, name)
        data = self._request(
            "POST",
            "/v1/image/upload",
            files={"file": (name, fileobj, ctype)},
            context=f"upload of {name!r}",
        )
        return str(data["object"])

    def list_generation_outputs(
        self, *, per_page: int = 50, cursor: str | None = None, upscaled: str = "any"
    ) -> GenerationOutputsPage:
        """One page of ``GET /v1/image/generation/outputs`` (``upscaled``: only, not or any)."""
        if not 1 <= per_page <= 300:
            raise StablecogConfigError(f"per_page must be 1..300, got {per_page}")
        if upscaled not in ("only", "not", "any"):
            raise StablecogConfigError(f"upscaled must be 'only', 'not' or 'any', got {upscaled!r}")
        params: dict[str, Any] = {"per_page": per_page, "upscaled": upscaled}
        if cursor:
            params["cursor"] = cursor
        data = self._request("GET", "/v1/image/generation/outputs", params=params, context="generation outputs")
        return GenerationOutputsPage.from_json(data)

    def iter_generation_outputs(
        self, *, per_page: int = 50, upscaled: str = "any", limit: int | None = None
    ) -> Iterator[GenerationOutput]:
        """Every generation output, following the cursor (at most ``limit``)."""
        cursor: str | None = None
        count = 0
        while True:
            page = self.list_generation_outputs(per_page=per_page, cursor=cursor, upscaled=upscaled)
            for output in page.outputs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield output
            if not page.next_cursor or not page.outputs:
                return
            cursor = page.next_cursor

    def health(self) -> bool:
        """``GET /v1/health``: True when the API says ``ok``."""
        data = self._request("GET", "/v1/health", auth=False, retry=False, context="health")
        return isinstance(data, dict) and data.get("status") == "ok"

    # -- downloads of results ------------------------------------------------------------------

    def download(
        self,
        url: str,
        open_target: Callable[[], IO[bytes]],
        *,
        max_bytes: int = MAX_DOWNLOAD_BYTES,
        chunk_size: int = 1024 * 1024,
    ) -> int:
        """Stream the image at ``url`` into ``open_target()`` chunk by chunk; return bytes written.

        Only http(s), no API key sent, Content-Type must be ``image/*``, at most ``max_bytes``.
        ``open_target`` is called once per attempt so a retried download starts from empty.
        Transient failures are retried under the client's policy.
        """
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            raise StablecogInputError(
                f"refusing to download {redact_url(str(url))!r}: only http(s) result URLs are fetched",
                code="invalid_output_url",
            )
        return self.call_with_retry(lambda: self._download_once(url, open_target, max_bytes, chunk_size))

    def _download_once(self, url: str, open_target: Callable[[], IO[bytes]], max_bytes: int, chunk_size: int) -> int:
        import requests

        shown = redact_url(url)
        try:
            with self.session.get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code >= 400:
                    raise error_from_response(
                        response.status_code, response.headers, "", context=f"download of {shown!r}"
                    )
                ctype = response.headers.get("Content-Type", "")
                if not ctype.startswith("image/"):
                    raise StablecogInputError(
                        f"download of {shown!r}: the server sent {ctype or 'no content type'!r}, "
                        "not an image",
                        code="invalid_output_content",
                    )
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > max_bytes:
                    raise StablecogInputError(
                        f"download of {shown!r}: {declared} bytes exceeds the {max_bytes}-byte cap",
                        code="output_too_large",
                    )
                written = 0
                with open_target() as fh:
                    for chunk in response.iter_content(chunk_size):
                        written += len(chunk)
                        if written > max_bytes:
                            raise StablecogInputError(
                                f"download of {shown!r}: more than {max_bytes} bytes; stopped",
                                code="output_too_large",
                            )
                        fh.write(chunk)
                return written
        except requests.RequestException as exc:
            raise StablecogConnectionError(
                f"download of {shown!r}: connection_error: {type(exc).__name__}: {explain_connection_error(exc)}"
            ) from None


def explain_connection_error(exc: BaseException) -> str:
    """Words for a transport failure, without echoing URLs or headers from the exception."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "no answer within the timeout (raise the connection's timeout extra if upscales are slow)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off before it was complete"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect or the connection was dropped; check the base URL and the network"
    return "the request failed"


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_READ_TIMEOUT",
    "RateLimiter",
    "RetryPolicy",
    "StablecogClient",
    "StablecogError",
]
