"""Issue #18, client side, against a real emulator process: every credit accounted for.

* a 429 storm fails nothing (429s spend time, not attempts; the shared limiter slows down);
* an answer lost after the charge is ``response_lost``, raised once and never re-paid by the
  client, for exactly the answers the emulator lost;
* a broken image stops after two worker failures;
* abandoned requests are closed, and the emulator counts their answers as lost;
* with answer-order jitter every answer carries the balance right after its own charge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from airflow_provider_stablecog import exceptions as exc
from airflow_provider_stablecog.client import RetryPolicy, StablecogClient
from airflow_provider_stablecog.emulator.testing import RunningEmulator, run_emulator

pytestmark = pytest.mark.timeout(180)
UPSCALE_ROUTE = "POST /v1/image/upscale/create"


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[RunningEmulator]:
    with run_emulator(latency=0.05, credits=1000, plan_concurrency=4, rate_limit=0) as emulator:
        yield emulator


@pytest.fixture
def emu(emulator_process: RunningEmulator) -> RunningEmulator:
    emulator_process.reset()
    emulator_process.configure(
        latency=0.05, latency_jitter=0, rate_limit=0, read_rate_limit=None, upload_rate_limit=None, faults={}
    )
    return emulator_process


def make_client(emu: RunningEmulator, **options: Any) -> StablecogClient:
    options.setdefault("pool_size", 8)
    return StablecogClient(emu.api_key, emu.base_url, **options)


def run_all(fn: Callable[[str], Any], items: list[str], threads: int = 5) -> dict[str, Any]:
    """Run ``fn`` on every item from ``threads`` threads; map each item to its result or exception."""

    def one(item: str) -> Any:
        try:
            return fn(item)
        except exc.StablecogError as error:
            return error

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(items, pool.map(one, items), strict=True))


def inputs(emu: RunningEmulator, count: int, tag: int = 0) -> list[str]:
    return [emu.sample_url("32x32.png", seed=tag * 1000 + n) for n in range(count)]


# -- 1. a 429 storm ---------------------------------------------------------------------------------


def test_40_upscales_from_5_threads_under_2_per_second_fail_nothing(emu):
    emu.configure(rate_limit=2)
    items = inputs(emu, 40)
    with make_client(emu) as client:  # default limits (8/s) and retry policy (6 attempts)
        results = run_all(client.upscale, items)
        limiter_rate = client.rate_limiter.rate
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert failed == {}
    books = emu.ledger()
    assert books["rate_limited"] > 0  # there was a storm, and nobody paid for it
    assert books["net_charged"] == 40 and books["refunded"] == 0
    assert all(books["charges_by_input"][i] == 1 for i in items)
    assert limiter_rate is not None and limiter_rate < 8  # the shared limiter backed off


def test_uploads_from_5_threads_stay_within_the_upload_window(emu, tmp_path):
    emu.configure(rate_limit=10)  # the server's figures: creates 10/s, uploads 4/s
    png = emu._http.get(emu.sample_url("16x16.png")).content
    names = [f"img{n}.png" for n in range(16)]
    with make_client(emu) as client:
        results = run_all(lambda name: client.upload_image(png, filename=name), names)
    assert all(isinstance(v, str) and v.startswith("s3://") for v in results.values()), results
    books = emu.ledger()
    assert books["uploads"] == 16
    assert books["rate_limited_by_class"].get("upload", 0) <= 2


def test_the_limiter_learns_the_server_limit_and_stops_drawing_429s(emu):
    emu.configure(rate_limit=2)
    with make_client(emu) as client:
        run_all(client.upscale, inputs(emu, 6, tag=1))
        assert client.rate_limiter.max_rate == pytest.approx(1.6)  # 80 % of X-RateLimit-Limit
        before = emu.ledger()["rate_limited"]
        time.sleep(1.0)
        run_all(client.upscale, inputs(emu, 6, tag=11))
    assert emu.ledger()["rate_limited"] - before <= 1


# -- 2. lost answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset_after_charge", "drop_after_charge"])
def test_lost_answers_raise_response_lost_and_are_never_repaid(emu, fault):
    emu.configure(faults={fault: 0.2}, fault_seed=7)
    items = inputs(emu, 30, tag=2)
    with make_client(emu) as client:
        results = run_all(client.upscale, items)
    lost = [k for k, v in results.items() if isinstance(v, exc.StablecogResponseLostError)]
    others = [
        v
        for v in results.values()
        if isinstance(v, Exception) and not isinstance(v, exc.StablecogResponseLostError)
    ]
    books = emu.ledger()
    assert others == []
    assert len(lost) == books["responses_lost"] == books["faults_injected"][fault] > 0
    assert books["requests_by_route"][UPSCALE_ROUTE] == 30  # no request was sent twice
    assert books["net_charged"] == 30 and all(books["charges_by_input"][i] == 1 for i in items)
    assert books["delivered"] == 30 - len(lost)
    message = str(results[lost[0]])
    assert "may have been charged" in message and "check the base URL" not in message
    assert emu.api_key not in message


def test_read_timeout_is_response_lost_and_the_emulator_counts_it(emu, caplog):
    caplog.set_level(logging.WARNING)
    emu.configure(latency=1.2)
    with (
        make_client(emu, read_timeout=0.4) as client,
        pytest.raises(exc.StablecogResponseLostError, match="read timeout"),
    ):
        client.upscale(emu.sample_url("32x32.png", seed=3))
    assert "shorter than the server's longest hold" in caplog.text
    books = _ledger_when(emu, lambda b: b["responses_lost"] == 1)
    assert (books["charged"], books["responses_lost"], books["abandoned_by_client"], books["delivered"]) == (
        1,
        1,
        1,
        0,
    )
    assert books["requests_by_route"][UPSCALE_ROUTE] == 1


def test_connect_error_is_retried_and_says_check_the_base_url():
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, jitter=0)
    with StablecogClient("sc-" + "0" * 64, "http://127.0.0.1:9", retry=policy, connect_timeout=1) as client:
        with pytest.raises(exc.StablecogConnectionError, match="check the base URL") as info:
            client.upscale("https://img.test/a.png")
    assert not isinstance(info.value, exc.StablecogResponseLostError)


# -- 3. a broken image ------------------------------------------------------------------------------


def test_broken_image_stops_after_two_worker_failures(emu):
    with make_client(emu) as client, pytest.raises(exc.ImageProbablyBrokenError) as info:
        client.upscale(emu.sample_url("bad/worker-fails.png"))
    assert info.value.code == "image_probably_broken" and "re-encode" in str(info.value)
    books = emu.ledger()
    assert (books["charged"], books["refunded"], books["net_charged"], books["broken_inputs"]) == (2, 2, 0, 2)
    assert books["requests_by_route"][UPSCALE_ROUTE] == 2


# -- 4. abandoned requests --------------------------------------------------------------------------


def test_cancel_with_abort_closes_in_flight_requests(emu):
    emu.configure(latency=1.5)
    items = inputs(emu, 3, tag=4)
    with make_client(emu) as client:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client.upscale, item) for item in items]
            _ledger_when(emu, lambda b: b["in_flight"] == 3)
            started = time.monotonic()
            client.cancel(abort=True)
            errors = [f.exception(timeout=5) for f in futures]
            assert time.monotonic() - started < 1.0  # closed at once, not at the answer
    assert all(isinstance(e, exc.ResponseAbandonedError) for e in errors), errors
    assert all(isinstance(e, exc.CancelledError) and e.possibly_charged for e in errors)
    books = _ledger_when(emu, lambda b: b["responses_lost"] == 3)
    assert (books["charged"], books["abandoned_by_client"], books["delivered"]) == (3, 3, 0)


def test_close_with_requests_in_flight_abandons_them(emu):
    emu.configure(latency=1.5)
    client = make_client(emu)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.upscale, emu.sample_url("32x32.png", seed=77))
        _ledger_when(emu, lambda b: b["in_flight"] == 1)
        client.close()
        assert isinstance(future.exception(timeout=5), exc.ResponseAbandonedError)
    assert _ledger_when(emu, lambda b: b["responses_lost"] == 1)["abandoned_by_client"] == 1


def test_cancel_without_abort_still_receives_answers_in_flight(emu):
    emu.configure(latency=0.6)
    with make_client(emu) as client, ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.upscale, item) for item in inputs(emu, 2, tag=5)]
        _ledger_when(emu, lambda b: b["in_flight"] == 2)
        client.cancel()
        assert all(f.result(timeout=5).upscaled_image_url for f in futures)
        with pytest.raises(exc.CancelledError):
            client.upscale(emu.sample_url("32x32.png", seed=999))
    assert emu.ledger()["delivered"] == 2


# -- 5. answers out of charge order -----------------------------------------------------------------


def test_jittered_answers_carry_the_balance_after_their_own_charge(emu):
    emu.configure(latency=0.02, latency_jitter=0.6, fault_seed=3)
    arrivals: list[int] = []
    lock = threading.Lock()
    with make_client(emu, rate_limit=None) as client:

        def upscale(item: str) -> None:
            remaining = client.upscale(item).remaining_credits
            with lock:
                arrivals.append(remaining)

        results = run_all(upscale, inputs(emu, 20, tag=6))
    assert not any(isinstance(v, Exception) for v in results.values())
    assert sorted(arrivals) == list(range(980, 1000))  # each the balance right after its own charge
    assert arrivals != sorted(arrivals, reverse=True)  # an older, higher balance arrived later


def _ledger_when(
    emu: RunningEmulator, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        books = emu.ledger()
        if condition(books) or time.monotonic() > deadline:
            return books
        time.sleep(0.05)
