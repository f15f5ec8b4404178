"""A plain client for the Stablecog API: requests, typed results, classified errors, retries.

Nothing here imports Airflow, so the client can be used (and tested) on its own::

    from airflow_provider_stablecog.client import StablecogClient

    with StablecogClient(api_key="sc-...") as client:
        result = client.upscale("https://example.com/cat.png")
        print(result.upscaled_image_url, result.remaining_credits)

One :class:`requests.Session` carries every call, with a connection pool sized for the caller's
concurrency. Threads may share one client (the UpscaleOperator does): the only shared mutable
state is the session's pool (urllib3's pool is thread-safe), the rate limiters (locked), the set
of in-flight connections (locked) and the cancel event. The API key is sent per request to API
routes only, never to image hosts.

Money rules (issue #18):

* A 429 is never charged: it does not spend an attempt of the call, only time (at most
  ``RetryPolicy.rate_limit_budget`` seconds), and it slows every thread of the client (the
  limiter of that route class halves its rate, pauses for ``Retry-After`` and recovers
  additively; waiting threads restart spaced, not together).
* A charging request (``POST /v1/image/upscale/create``, ``POST /v1/image/generation/create``)
  whose answer is lost after sending is never resent by the client: it raises
  :class:`StablecogResponseLostError` (``response_lost``).
* The worker failing twice on the same input raises :class:`ImageProbablyBrokenError`.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_stablecog.exceptions import (
    CancelledError,
    ImageProbablyBrokenError,
    RateLimitError,
    ResponseAbandonedError,
    StablecogConfigError,
    StablecogConnectionError,
    StablecogError,
    StablecogInputError,
    StablecogResponseLostError,
    error_from_response,
    image_probably_broken,
    is_retryable,
    is_worker_failure,
    lost_answer_error,
)
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
from airflow_provider_stablecog.utils.urls import redact_url

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.stablecog.com"
DEFAULT_CONNECT_TIMEOUT = 10.0
# The server waits 240 s for news from the worker and starts a fresh 240 s when the worker reports
# the job started, so an upscale can be held ~480 s, plus any queue wait before that.
SERVER_LONGEST_HOLD = 480.0
# A read timeout below this can give up on an answer the server is still going to send (and charge).
MIN_SAFE_READ_TIMEOUT = SERVER_LONGEST_HOLD + 20.0
# 480 s of hold and two minutes of queue wait.
DEFAULT_READ_TIMEOUT = 600.0
# Requests per second, shared by every call of one client. The server allows 10/s per IP for
# create routes in a sliding 1 s window (nominal 5/s); rate + burst <= 10 keeps 429s rare.
DEFAULT_RATE_LIMIT = 8.0
# POST /v1/image/upload has its own window of 4/s per IP: 3/s + a burst of 1 stays within it.
DEFAULT_UPLOAD_RATE_LIMIT = 3.0
# Reads (GET /v1/credits, outputs, models) are refused at 20/s on the same counter as creates.
READ_RATE_FACTOR = 2.0
# How long one call may keep being answered 429 before it gives up (429s spend no attempts).
DEFAULT_RATE_LIMIT_BUDGET = 300.0
# The worker failing this many times on one input means the input is probably broken.
WORKER_FAILURES_BEFORE_BROKEN = 2
#: Route classes of the server's rate limits.
ROUTE_CREATE, ROUTE_READ, ROUTE_UPLOAD = "create", "read", "upload"
DEFAULT_POOL_SIZE = 10
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Upscaled images are at most 4096x4096 JPEG; anything far larger is not an image we asked for.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
USER_AGENT = "airflow-provider-stablecog"

_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


@dataclass(frozen=True)
class StablecogRetryPolicy:
    """Retries for transient errors only: exponential backoff with jitter, Retry-After honoured.

    Bounded by ``max_attempts`` (first try included) and ``max_elapsed`` seconds overall. A 429
    spends no attempt (it is never charged): it is bounded by ``rate_limit_budget`` seconds,
    counted from the call's first 429, and after its ``Retry-After`` each waiting thread adds a
    random ``rate_limit_jitter`` seconds so they do not all fire at once.
    """

    max_attempts: int = 6
    max_elapsed: float = 900.0
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    jitter: float = 1.0
    rate_limit_budget: float = DEFAULT_RATE_LIMIT_BUDGET
    rate_limit_jitter: float = 0.5

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1, rate_limit_budget=0.0)

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure (1, 2, ...): doubled, capped, jittered."""
        base = min(self.max_backoff, self.initial_backoff * 2 ** max(0, failures - 1))
        return base + (rng or random).uniform(0, self.jitter) if self.jitter > 0 else base


#: the name of provider 0.1 (``airflow.sdk.RetryPolicy`` is another thing: Airflow task retries)
RetryPolicy = StablecogRetryPolicy


class RateLimiter:
    """A token bucket shared by threads: at most ``rate`` acquisitions per second (burst ``burst``).

    Adaptive (AIMD): :meth:`on_rate_limited` (a 429) pauses every caller for ``Retry-After``,
    empties the bucket (no burst when the pause ends: callers restart ``1/rate`` apart, each with
    up to ``jitter`` seconds of random delay) and halves the rate (at most once per ``window``
    seconds, so one storm of 429s counts once, never below ``min_rate``); the rate then grows back
    by ``increase`` requests/s every second up to the configured ``rate``. With ``rate=None`` there
    is no bucket, but 429 pauses (with jitter) still apply. ``pause(seconds)`` holds everyone back.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_rate: float | None = None,
        decrease: float = 0.5,
        increase: float = 0.25,
        window: float = 1.0,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.max_rate = rate if rate and rate > 0 else None
        self.rate = self.max_rate
        self.burst = max(1.0, burst if burst is not None else (self.rate or 1.0))
        self.min_rate = (
            min_rate if min_rate is not None else (min(0.25, self.max_rate) if self.max_rate else None)
        )
        self.decrease = decrease
        self.increase = increase
        self.window = window
        self.jitter = jitter
        self.rate_limited = 0
        self._rng = random.Random(seed)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._rate_updated = self._updated
        self._last_decrease = -math.inf
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def on_rate_limited(self, retry_after: float | None = None, server_limit: float | None = None) -> None:
        """A 429: pause everyone for ``retry_after`` (default 1 s), empty the bucket, slow down.

        ``server_limit`` (the 429's ``X-RateLimit-Limit``, requests per sliding second) caps the
        rate at 80 % of it from now on, with no bursts: spaced requests never fill the window.
        """
        with self._lock:
            now = self._clock()
            self.rate_limited += 1
            self._paused_until = max(self._paused_until, now + (1.0 if retry_after is None else retry_after))
            if self.rate is None:
                return
            if server_limit and server_limit > 0 and self.max_rate is not None:
                self.max_rate = max(self.min_rate or 0.0, min(self.max_rate, 0.8 * server_limit))
                self.rate = min(self.rate, self.max_rate)
            if now - self._last_decrease >= self.window:
                self.rate = max(self.min_rate or 0.0, self.rate * self.decrease)
                self._last_decrease = now
            self.burst = 1.0  # the server's window is full: no more bursts from this client
            self._tokens = 0.0
            self._updated = self._rate_updated = self._paused_until

    def debit(self) -> None:
        """Count a request sent through another bucket that the server counts here too (no wait)."""
        with self._lock:
            if self.rate is not None:
                self._refill(self._clock())
                self._tokens = max(-self.burst, self._tokens - 1.0)

    def _refill(self, now: float) -> None:
        assert self.rate is not None and self.max_rate is not None
        if self.rate < self.max_rate and now > self._rate_updated:
            self.rate = min(self.max_rate, self.rate + self.increase * (now - self._rate_updated))
        self._rate_updated = max(self._rate_updated, now)
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._updated) * self.rate)
        self._updated = max(self._updated, now)

    def delay(self) -> float:
        """Take a token if one is free (returns 0), else return how long to wait before retrying."""
        with self._lock:
            now = self._clock()
            if now < self._paused_until:
                return self._paused_until - now + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)
            if self.rate is None:
                return 0.0
            self._refill(now)
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


def route_class(method: str, path: str) -> str:
    """The server's rate-limit class of a route: ``upload``, ``create`` (other POSTs) or ``read``."""
    if path.rstrip("/") == "/v1/image/upload":
        return ROUTE_UPLOAD
    return ROUTE_CREATE if method.upper() == "POST" else ROUTE_READ


def read_timeout_warning(read_timeout: float | None) -> str | None:
    """The one rule for the read timeout: a sentence when it is too short for the server's hold, else None.

    The server holds an upscale up to 240 s waiting for the worker and a fresh 240 s once the
    worker starts (~480 s, plus any queue wait). A client that stops reading earlier still pays
    (the server carries on) but never sees the answer, and the batch may pay again.
    """
    if read_timeout is None or read_timeout >= MIN_SAFE_READ_TIMEOUT:
        return None
    return (
        f"read timeout {read_timeout:g} s is shorter than the server's longest hold "
        f"(~{SERVER_LONGEST_HOLD:g} s: 240 s for the worker, a fresh 240 s once it starts, plus queue "
        f"wait); an upscale answered later is still charged but its answer is lost "
        f"(response_lost). Use at least {MIN_SAFE_READ_TIMEOUT:g} s (default {DEFAULT_READ_TIMEOUT:g})"
    )


_warned_timeouts: set[float] = set()
_warned_lock = threading.Lock()


def warn_short_read_timeout(read_timeout: float | None, logger: logging.Logger | None = None) -> bool:
    """Log :func:`read_timeout_warning` once per process and value; return True when it warned now."""
    message = read_timeout_warning(read_timeout)
    if message is None:
        return False
    with _warned_lock:
        if read_timeout in _warned_timeouts:
            return False
        _warned_timeouts.add(float(read_timeout))  # type: ignore[arg-type]
    (logger or log).warning("Stablecog: %s", message)
    return True


def request_was_sent(exc: BaseException) -> bool:
    """Whether a transport failure happened after the request went out (so it may have been charged).

    Not sent: connect refused or timed out, DNS, TLS handshake, proxy. Sent: read timeout, a
    connection reset or closed while waiting for or reading the answer, a cut-off body. Anything
    unknown counts as sent: claiming "maybe charged" is the safe mistake.
    """
    import requests
    from urllib3 import exceptions as u3

    if isinstance(
        exc,
        (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError, requests.exceptions.ProxyError),
    ):
        return False
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ),
    ):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
        exc, requests.exceptions.ReadTimeout
    ):
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, u3.MaxRetryError):
            reason = reason.reason
        if isinstance(reason, (u3.NewConnectionError, u3.ConnectTimeoutError, u3.NameResolutionError)):
            return False
    return True


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
    :param read_timeout: seconds to wait for an answer, default 600: the server may hold an upscale
        ~480 s plus queue wait; a shorter one is warned about once (:func:`read_timeout_warning`).
    :param pool_size: connections kept open; at least the number of threads sharing the client.
    :param rate_limit: create requests per second for the whole client (upscales; default 8);
        ``None`` or 0 for no client-side limit on any route class.
    :param upload_rate_limit: uploads per second (own server window of 4/s; default
        ``min(3, rate_limit)``, 0 for none).
    :param read_rate_limit: GET requests per second (default ``2 × rate_limit``, 0 for none); a
        read also counts against the create budget, as the server counts both on one counter.
    :param retry: the retry policy for transient errors (and the 429 time budget).
    :param broken_after: worker failures (500 unknown error) on one upscale input after which it
        raises :class:`ImageProbablyBrokenError` instead of retrying (default 2; 0 = never).
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
        upload_rate_limit: float | None = None,
        read_rate_limit: float | None = None,
        retry: RetryPolicy | None = None,
        user_agent: str = USER_AGENT,
        broken_after: int = WORKER_FAILURES_BEFORE_BROKEN,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.pool_size = max(1, int(pool_size))
        self.retry_policy = retry or RetryPolicy()
        self.broken_after = int(broken_after)
        jitter = self.retry_policy.rate_limit_jitter
        rate = rate_limit if rate_limit and rate_limit > 0 else None
        upload = (
            min(DEFAULT_UPLOAD_RATE_LIMIT, rate) if upload_rate_limit is None and rate else upload_rate_limit
        )
        read = READ_RATE_FACTOR * rate if read_rate_limit is None and rate else read_rate_limit
        #: The create-route limiter (upscales); reads also draw on it.
        self.rate_limiter = RateLimiter(rate, _default_burst(rate), jitter=jitter)
        self.read_limiter = RateLimiter(read, _default_burst(read), jitter=jitter)
        self.upload_limiter = RateLimiter(upload, 1.0, jitter=jitter)
        self.user_agent = user_agent
        self.cancel_event = threading.Event()
        self._aborted_at: float | None = None
        self._in_flight = _InFlight()
        self._warned_timeout = False
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def limiter_for(self, route: str) -> RateLimiter:
        """The limiter of a route class (``create``, ``read`` or ``upload``)."""
        return {ROUTE_UPLOAD: self.upload_limiter, ROUTE_READ: self.read_limiter}.get(
            route, self.rate_limiter
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._make_session()
        return self._session

    def _make_session(self) -> requests.Session:
        session = _session_class()()
        adapter = _tracking_adapter(self._in_flight, self.pool_size)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = self.user_agent
        return session

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (headers not yet received)."""
        return len(self._in_flight)

    def cancel(self, abort: bool = False) -> None:
        """Stop: no new request is sent; waits for backoff or the rate limit end at once.

        Requests already sent keep waiting for their answer by default: the server carries on
        (and charges) whatever the client does, so an answer that still arrives is worth having.
        ``abort=True`` also closes their connections at once (as :meth:`close` does); they raise
        :class:`ResponseAbandonedError` (upscales: possibly charged) or :class:`CancelledError`.
        """
        self.cancel_event.set()
        if abort:
            self.abort_in_flight()

    def abort_in_flight(self) -> int:
        """Close the connections of requests still waiting for an answer; return how many."""
        self._aborted_at = time.monotonic()
        return self._in_flight.abort_all()

    def close(self) -> None:
        """Close every connection, including those of requests still in flight."""
        if self._in_flight:
            self.abort_in_flight()
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
        charging: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Send one API call (with retries for transient errors) and return its parsed JSON.

        ``charging``: the route takes credits, so a lost answer is :class:`StablecogResponseLostError`
        (never resent here) and two worker failures are :class:`ImageProbablyBrokenError`.
        """
        headers = {**kwargs.pop("headers", {}), **(self._auth_headers() if auth else {})}
        files = kwargs.get("files")

        def attempt() -> Any:
            if files is not None:  # a retried multipart upload must re-read its file from the start
                for part in files.values():
                    if hasattr(part[1], "seek"):
                        part[1].seek(0)
            return self._send(method, path, headers=headers, context=context, charging=charging, **kwargs)

        if not retry:
            return attempt()
        broken_after = self.broken_after if charging else 0
        return self.call_with_retry(attempt, context=context or path, broken_after=broken_after)

    def call_with_retry(self, fn: Callable[[], Any], *, context: str = "", broken_after: int = 0) -> Any:
        """Run ``fn`` under this client's retry policy (transient errors only).

        429s spend no attempt, only time (``rate_limit_budget``); the shared limiter does the
        waiting. ``broken_after`` > 0: that many worker failures raise ImageProbablyBrokenError.
        """
        policy = self.retry_policy
        start = time.monotonic()
        failures = worker_failures = 0
        first_429: float | None = None
        while True:
            try:
                return fn()
            except StablecogError as exc:
                if not is_retryable(exc) or self.cancel_event.is_set():
                    raise
                now = time.monotonic()
                if isinstance(exc, RateLimitError):
                    first_429 = now if first_429 is None else first_429
                    if now - first_429 >= policy.rate_limit_budget or now - start >= policy.max_elapsed:
                        raise self._gave_up(exc, f"rate limited for {now - first_429:.0f} s") from None
                    log.info(
                        "Stablecog rate limit (429): %s; waiting with the other threads", context or "call"
                    )
                    if not getattr(exc, "limiter_paused", False):  # e.g. an image host: no shared limiter
                        self._sleep(
                            (1.0 if exc.retry_after is None else exc.retry_after)
                            + random.uniform(0, policy.rate_limit_jitter)
                        )
                    continue  # the limiter holds this thread (and the others) back; no attempt spent
                failures += 1
                if is_worker_failure(exc):
                    worker_failures += 1
                    if broken_after and worker_failures >= broken_after:
                        raise image_probably_broken(context, worker_failures) from None
                if failures >= policy.max_attempts or now - start >= policy.max_elapsed:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else policy.backoff(failures)
                wait = min(wait, max(0.0, policy.max_elapsed - (now - start)))
                log.warning("Stablecog call failed (attempt %d): %s; retrying in %.1f s", failures, exc, wait)
                self._sleep(wait)

    @staticmethod
    def _gave_up(exc: StablecogError, why: str) -> StablecogError:
        return type(exc)(
            f"{exc.message} — gave up: {why} (the rate_limit_budget)",
            code=exc.code,
            status_code=exc.status_code,
            retry_after=exc.retry_after,
        )

    def _sleep(self, seconds: float) -> None:
        if self.cancel_event.wait(seconds):
            raise CancelledError("the batch was stopped while waiting to retry")

    def _send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        context: str,
        charging: bool = False,
        **kwargs: Any,
    ) -> Any:
        import requests

        what = context or f"{method} {path}"
        if self.cancel_event.is_set():
            raise CancelledError(f"{what}: the batch was stopped; the request was not sent")
        if charging and not self._warned_timeout:
            self._warned_timeout = True
            warn_short_read_timeout(self.timeout[1])
        route = route_class(method, path)
        self.limiter_for(route).acquire(self.cancel_event)
        if route == ROUTE_READ:
            self.rate_limiter.debit()  # the server counts reads on the create counter too
        url = f"{self.base_url}{path}"
        started = time.monotonic()
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            text = response.text
        except requests.RequestException as exc:
            # The exception text may contain the URL but never the headers; keep only its class.
            raise self._transport_error(exc, method, path, what, charging, started) from None
        if response.status_code >= 400:
            error = error_from_response(response.status_code, response.headers, text, context=what)
            if isinstance(error, RateLimitError):
                self._on_rate_limited(
                    route, error.retry_after, _number(response.headers.get("X-RateLimit-Limit"))
                )
                error.limiter_paused = True  # type: ignore[attr-defined]
            raise error
        try:
            return response.json()
        except ValueError:
            if charging and response.status_code == 200:
                raise lost_answer_error(what, method, path, "HTTP 200 with an unreadable body") from None
            raise StablecogConnectionError(
                f"{what}: the answer was not JSON (HTTP {response.status_code}); a proxy may be in the way",
                code="invalid_response",
                status_code=response.status_code,
            ) from None

    def _on_rate_limited(self, route: str, retry_after: float | None, server_limit: float | None) -> None:
        self.limiter_for(route).on_rate_limited(retry_after, server_limit)
        if route == ROUTE_READ:  # refused at 20 on the shared counter: creates are refused too
            self.rate_limiter.on_rate_limited(retry_after)

    def _transport_error(
        self, exc: BaseException, method: str, path: str, what: str, charging: bool, started: float
    ) -> StablecogError:
        """Classify a transport failure: not sent (retryable), lost after sending, or abandoned by us."""
        sent = request_was_sent(exc)
        if sent and self._aborted_at is not None and self._aborted_at >= started:  # we closed it
            if charging:
                return ResponseAbandonedError(
                    f"{what}: response_abandoned: {explain_abandoned()}", method=method, path=path
                )
            return CancelledError(f"{what}: the batch was stopped while waiting for the answer")
        if sent and charging:
            return lost_answer_error(
                what, method, path, f"{type(exc).__name__}: {explain_connection_error(exc, sent=True)}"
            )
        return StablecogConnectionError(
            f"{what}: connection_error: {type(exc).__name__} talking to {redact_url(self.base_url)}: "
            f"{explain_connection_error(exc, sent=sent)}",
        )

    # -- routes ------------------------------------------------------------------------------

    def upscale(self, input: str, model_id: str | None = None) -> UpscaleResult:
        """``POST /v1/image/upscale/create``: upscale one image 4× (1 credit; synchronous).

        :raises StablecogResponseLostError: sent, answer lost: maybe charged, not resent here.
        :raises ImageProbablyBrokenError: the worker failed twice on this input (refunded).
        """
        body: dict[str, str] = {"input": input}
        if model_id:
            body["model_id"] = model_id
        data = self._request(
            "POST",
            "/v1/image/upscale/create",
            json=body,
            context=f"upscale of {redact_url(input)!r}",
            charging=True,
        )
        try:
            return UpscaleResult.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise lost_answer_error(
                f"upscale of {redact_url(input)!r}",
                "POST",
                "/v1/image/upscale/create",
                "HTTP 200 without outputs",
            ) from None

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        model_id: str | None = None,
        width: int | None = None,
        height: int | None = None,
        num_outputs: int | None = None,
        guidance_scale: float | None = None,
        scheduler_id: str | None = None,
        seed: int | None = None,
        init_image_url: str | None = None,
        prompt_strength: float | None = None,
        inference_steps: int | None = None,
    ) -> GenerationResult:
        """``POST /v1/image/generation/create``: text- or image-to-image (``num_outputs`` credits; synchronous).

        Only the arguments given are sent; the server fills the rest from the model's defaults.
        Send ``width`` and ``height`` with a ``model_id``: the server crashes on an unknown model
        when they are omitted. The values are not checked here (see
        :mod:`airflow_provider_stablecog.utils.prompts` for the contract's limits).

        :raises StablecogResponseLostError: sent, answer lost: maybe charged, not resent here.
        """
        body: dict[str, Any] = {"prompt": prompt}
        optional = {
            "negative_prompt": negative_prompt,
            "model_id": model_id,
            "width": width,
            "height": height,
            "num_outputs": num_outputs,
            "guidance_scale": guidance_scale,
            "scheduler_id": scheduler_id,
            "seed": seed,
            "init_image_url": init_image_url,
            "prompt_strength": prompt_strength,
            "inference_steps": inference_steps,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        what = f"generation of {_shorten(prompt)!r}"
        data = self._request("POST", "/v1/image/generation/create", json=body, context=what, charging=True)
        try:
            return GenerationResult.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise lost_answer_error(
                what, "POST", "/v1/image/generation/create", "HTTP 200 without outputs"
            ) from None

    def list_generation_models(self) -> list[GenerationModel]:
        """``GET /v1/image/generation/models`` (no auth): active, visible models."""
        data = self._request("GET", "/v1/image/generation/models", auth=False, context="generation models")
        return [GenerationModel.from_json(m) for m in data.get("models") or () if isinstance(m, dict)]

    def get_generation_defaults(self) -> GenerationDefaults:
        """``GET /v1/image/generation/defaults`` (no auth)."""
        data = self._request(
            "GET", "/v1/image/generation/defaults", auth=False, context="generation defaults"
        )
        return GenerationDefaults.from_json(data)

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
        self,
        *,
        per_page: int = 50,
        cursor: str | None = None,
        upscaled: str = "any",
        order: str = "desc",
        model_ids: list[str] | None = None,
    ) -> GenerationOutputsPage:
        """One page of ``GET /v1/image/generation/outputs`` (``upscaled``: only, not or any).

        The server validates ``upscaled`` but does not apply it to the page (only to ``total``),
        so the client filters the page itself by ``upscaled_image_url``: a page can hold fewer
        than ``per_page`` outputs and still have a ``next_cursor``. ``order`` (``desc``, newest
        generation first, or ``asc``) and ``model_ids`` are applied by the server.
        """
        if not 1 <= per_page <= 300:
            raise StablecogConfigError(f"per_page must be 1..300, got {per_page}")
        if upscaled not in ("only", "not", "any"):
            raise StablecogConfigError(f"upscaled must be 'only', 'not' or 'any', got {upscaled!r}")
        if order not in ("desc", "asc"):
            raise StablecogConfigError(f"order must be 'desc' or 'asc', got {order!r}")
        params: dict[str, Any] = {"per_page": per_page, "upscaled": upscaled}
        if order != "desc":
            params["order"] = order
        if model_ids:
            params["model_ids"] = ",".join(model_ids)
        if cursor:
            params["cursor"] = cursor
        data = self._request(
            "GET", "/v1/image/generation/outputs", params=params, context="generation outputs"
        )
        page = GenerationOutputsPage.from_json(data)
        if upscaled == "any":
            return page
        kept = tuple(o for o in page.outputs if o.is_upscaled == (upscaled == "only"))
        return GenerationOutputsPage(outputs=kept, next_cursor=page.next_cursor, total=page.total)

    def iter_generation_outputs(
        self,
        *,
        per_page: int = 50,
        upscaled: str = "any",
        limit: int | None = None,
        model_ids: list[str] | None = None,
    ) -> Iterator[GenerationOutput]:
        """Every generation output, newest generation first, following the cursor (at most ``limit``)."""
        cursor: str | None = None
        count = 0
        while True:
            page = self.list_generation_outputs(
                per_page=per_page, cursor=cursor, upscaled=upscaled, model_ids=model_ids
            )
            for output in page.outputs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield output
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def find_generation_outputs(
        self,
        *,
        prompt: str,
        seed: int,
        created_after: datetime,
        width: int | None = None,
        height: int | None = None,
        model_id: str | None = None,
        max_outputs: int = 3000,
    ) -> list[list[GenerationOutput]]:
        """The account's generations matching a request, newest first; each one a list of its outputs.

        How a lost answer is found again: ``prompt`` (as the server cleaned it) and ``seed`` match,
        size and model too when given, and the generation was created (its credits taken) at or
        after ``created_after`` (the time just before sending, less any clock skew). Pages are
        read from the first (300 per page) and the listing stops at the first generation older
        than ``created_after`` or after ``max_outputs`` outputs.
        """
        groups: dict[str, list[GenerationOutput]] = {}
        for output in self.iter_generation_outputs(
            per_page=300, limit=max_outputs, model_ids=[model_id] if model_id else None
        ):
            created = _parse_time(output.generation_created_at or output.created_at)
            if created is not None and created < created_after:
                break  # pages are sorted by generation.created_at, newest first
            if output.prompt != prompt or output.seed != seed:
                continue
            if (width is not None and output.width not in (None, width)) or (
                height is not None and output.height not in (None, height)
            ):
                continue
            if model_id and output.model_id and output.model_id.lower() != model_id.lower():
                continue
            groups.setdefault(output.generation_id or output.id, []).append(output)
        return list(groups.values())

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

    def _download_once(
        self, url: str, open_target: Callable[[], IO[bytes]], max_bytes: int, chunk_size: int
    ) -> int:
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
            # A download charges nothing: a lost answer is retried like a failed connect.
            raise StablecogConnectionError(
                f"download of {shown!r}: connection_error: {type(exc).__name__}: {explain_connection_error(exc)}"
            ) from None


def explain_connection_error(exc: BaseException, sent: bool | None = None) -> str:
    """Words for a transport failure, without echoing URLs or headers from the exception.

    ``sent``: whether the request went out (see :func:`request_was_sent`); None works it out.
    """
    import requests

    if sent is None:
        sent = request_was_sent(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "could not connect within the connect timeout; check the base URL and the network"
    if isinstance(exc, requests.Timeout):
        return (
            "the request was sent but no answer came within the read timeout (the server may hold an "
            f"upscale ~{SERVER_LONGEST_HOLD:g} s plus queue wait; keep the timeout extra >= {MIN_SAFE_READ_TIMEOUT:g})"
        )
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the request was sent but the answer was cut off before it was complete"
    if sent:
        return "the request was sent but the connection was reset or closed before the answer came"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect; check the base URL and the network"
    return "the request failed before it was sent"


def explain_abandoned() -> str:
    from airflow_provider_stablecog.exceptions import explain

    return explain("response_abandoned")


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time of the API (``2024-01-01T00:00:00.000Z``) as an aware datetime, or None."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _default_burst(rate: float | None) -> float:
    """Rate + burst within the server's sliding 1 s window: 2 for the default 8/s, else 1."""
    return 2.0 if rate and rate >= 4 else 1.0


class _InFlight:
    """The connections of requests sent and not yet answered, so they can be closed on abort."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[Any] = set()

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, conn: Any) -> None:
        with self._lock:
            self._conns.add(conn)

    def discard(self, conn: Any) -> None:
        with self._lock:
            self._conns.discard(conn)

    def abort_all(self) -> int:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading the answer
                except OSError:
                    pass
        return len(conns)


def _session_class() -> type:
    """A ``requests.Session`` that reads the proxy environment once per scheme and host.

    requests re-reads it (every variable of ``os.environ``, twice) on each request: ~1 ms of CPU
    per request on a worker's environment, a third of this client's whole cost per image at low
    latency. The environment of a task does not change while its batch runs; the settings it
    gives are the same, only read once (``trust_env = False`` still turns it all off).
    """
    from urllib.parse import urlsplit

    import requests
    from requests.sessions import merge_setting
    from requests.utils import get_environ_proxies

    class EnvironmentOnceSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self._environ_proxies: dict[tuple[str, str, str | None], dict[str, str]] = {}
            self._environ_ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")

        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> Any:
            if not self.trust_env:
                return super().merge_environment_settings(url, proxies, stream, verify, cert)
            no_proxy = proxies.get("no_proxy") if proxies is not None else None
            parts = urlsplit(url)
            where = (parts.scheme, parts.netloc, no_proxy)
            found = self._environ_proxies.get(where)
            if found is None:  # a benign race: two threads may both read it once
                found = self._environ_proxies[where] = get_environ_proxies(url, no_proxy=no_proxy)
            if proxies is not None:
                for k, v in found.items():
                    proxies.setdefault(k, v)
            if verify is True or verify is None:
                verify = self._environ_ca_bundle or verify
            # from here on, exactly what requests does after reading the environment
            return {
                "proxies": merge_setting(proxies, self.proxies),
                "stream": merge_setting(stream, self.stream),
                "verify": merge_setting(verify, self.verify),
                "cert": merge_setting(cert, self.cert),
            }

    return EnvironmentOnceSession


def _tracking_adapter(in_flight: _InFlight, pool_size: int) -> Any:
    """An HTTPAdapter whose pools record each connection from sending until the answer's headers."""
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Tracking:
        def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
            in_flight.add(conn)
            try:
                return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
            finally:
                in_flight.discard(conn)

    class TrackedHTTPPool(Tracking, HTTPConnectionPool):
        pass

    class TrackedHTTPSPool(Tracking, HTTPSConnectionPool):
        pass

    class TrackingAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}

    return TrackingAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_LIMIT_BUDGET",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_UPLOAD_RATE_LIMIT",
    "MIN_SAFE_READ_TIMEOUT",
    "SERVER_LONGEST_HOLD",
    "ImageProbablyBrokenError",
    "RateLimiter",
    "RetryPolicy",
    "StablecogClient",
    "StablecogError",
    "StablecogResponseLostError",
    "StablecogRetryPolicy",
    "read_timeout_warning",
    "request_was_sent",
    "route_class",
    "warn_short_read_timeout",
]
