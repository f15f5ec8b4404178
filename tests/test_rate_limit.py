"""The client's shared, adaptive rate limiter (a controlled clock) and its route classes."""

from __future__ import annotations

import itertools

import pytest

from airflow_provider_stablecog.client import (
    DEFAULT_UPLOAD_RATE_LIMIT,
    ROUTE_CREATE,
    ROUTE_READ,
    ROUTE_UPLOAD,
    RateLimiter,
    StablecogClient,
    route_class,
)
from tests.conftest import API_KEY, BASE_URL


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_halves_the_rate_once_per_window_and_pauses_everyone():
    clock = Clock()
    limiter = RateLimiter(8.0, burst=2, clock=clock)
    limiter.on_rate_limited(1.0)
    limiter.on_rate_limited(1.0)  # the same storm: counted, not halved again
    assert limiter.rate == 4.0 and limiter.rate_limited == 2
    assert limiter.delay() == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.delay() > 0  # the bucket was emptied: no burst when the pause ends
    clock.now += 0.25
    assert limiter.delay() == 0
    clock.now += 1.0
    limiter.on_rate_limited(1.0)
    assert limiter.rate < 4.0


def test_waiters_restart_spaced_not_together():
    clock = Clock()
    limiter = RateLimiter(4.0, burst=4, clock=clock)
    limiter.on_rate_limited(2.0)
    clock.now += 2.0
    grants = []
    for _ in range(40):  # five threads polling every 50 ms
        if limiter.delay() == 0:
            grants.append(clock.now)
        clock.now += 0.05
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert grants[0] > 102.0  # not at the very end of the pause
    assert len(grants) >= 3 and min(gaps) >= 0.4  # ~2/s after the halving (recovering), one at a time


def test_the_rate_recovers_additively_up_to_the_configured_rate():
    clock = Clock()
    limiter = RateLimiter(8.0, burst=2, clock=clock, increase=1.0)
    limiter.on_rate_limited(0.0)
    assert limiter.rate == 4.0
    clock.now += 2.0
    limiter.delay()
    assert limiter.rate == pytest.approx(6.0)
    clock.now += 10.0
    limiter.delay()
    assert limiter.rate == 8.0


def test_the_server_limit_header_caps_the_rate():
    clock = Clock()
    limiter = RateLimiter(8.0, burst=2, clock=clock)
    limiter.on_rate_limited(1.0, server_limit=2.0)
    assert limiter.max_rate == pytest.approx(1.6) and limiter.rate <= 1.6 and limiter.burst == 1.0
    clock.now += 100
    limiter.delay()
    assert limiter.rate == pytest.approx(1.6)


def test_jitter_spreads_the_end_of_a_pause():
    clock = Clock()
    limiter = RateLimiter(None, clock=clock, jitter=0.5, seed=1)
    limiter.on_rate_limited(1.0)
    waits = {round(limiter.delay(), 3) for _ in range(10)}
    assert len(waits) > 5 and all(1.0 <= w <= 1.5 for w in waits)


def test_debit_counts_a_read_against_the_create_budget():
    clock = Clock()
    limiter = RateLimiter(2.0, burst=1, clock=clock)
    limiter.debit()
    assert limiter.delay() > 0


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/image/upscale/create", ROUTE_CREATE),
        ("POST", "/v1/image/upload", ROUTE_UPLOAD),
        ("GET", "/v1/credits", ROUTE_READ),
        ("GET", "/v1/image/generation/outputs", ROUTE_READ),
    ],
)
def test_route_classes(method, path, expected):
    assert route_class(method, path) == expected


def test_client_limits_per_route_class():
    with StablecogClient(API_KEY, BASE_URL, rate_limit=8) as client:
        assert client.limiter_for(ROUTE_CREATE).max_rate == 8
        assert client.limiter_for(ROUTE_READ).max_rate == 16
        assert client.limiter_for(ROUTE_UPLOAD).max_rate == DEFAULT_UPLOAD_RATE_LIMIT
        assert client.rate_limiter.burst + 8 <= 10  # within the server's sliding window
    with StablecogClient(API_KEY, BASE_URL, rate_limit=None) as client:
        assert all(client.limiter_for(r).rate is None for r in (ROUTE_CREATE, ROUTE_READ, ROUTE_UPLOAD))
    with StablecogClient(API_KEY, BASE_URL, rate_limit=None, upload_rate_limit=2) as client:
        assert client.upload_limiter.rate == 2


def test_a_read_429_slows_creates_too(requests_mock):
    requests_mock.get(
        f"{BASE_URL}/v1/credits",
        [
            {"status_code": 429, "text": "Too Many Requests", "headers": {"Retry-After": "0"}},
            {"json": {"total_remaining_credits": 1}},
        ],
    )
    with StablecogClient(API_KEY, BASE_URL) as client:
        assert client.get_credits().total_remaining_credits == 1
        assert client.read_limiter.rate_limited == 1 and client.rate_limiter.rate_limited == 1
        assert client.upload_limiter.rate_limited == 0
