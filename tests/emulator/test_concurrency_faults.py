"""Concurrency hold, queue limit, server timeout and fault injection (one event loop each)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from airflow_provider_stablecog.emulator.responses import UNKNOWN_ERROR
from tests.emulator.helpers import AUTH, run_async, state_of

UPSCALE = "/v1/image/upscale/create"


def sample(n: int) -> str:
    return f"http://testserver/samples/32x32.png?seed={n}"


async def post(http: httpx.AsyncClient, input_: str) -> httpx.Response:
    return await http.post(UPSCALE, headers=AUTH, json={"input": input_})


async def ledger(http: httpx.AsyncClient) -> dict[str, Any]:
    return (await http.get("/_emulator/ledger")).json()


def test_plan_concurrency_plus_one_run_rest_are_held(make_app):
    app = make_app(plan_concurrency=1, latency=0.3)

    async def scenario(http: httpx.AsyncClient) -> tuple[list[httpx.Response], dict, float]:
        started = time.monotonic()
        tasks = [asyncio.create_task(post(http, sample(n))) for n in range(5)]
        midway = await ledger(http)
        while midway["charged"] < 5 and time.monotonic() - started < 5:  # inputs fetched and validated
            await asyncio.sleep(0.01)
            midway = await ledger(http)
        responses = await asyncio.gather(*tasks)
        return responses, midway, time.monotonic() - started

    responses, midway, elapsed = run_async(app, scenario)
    assert [r.status_code for r in responses] == [200] * 5
    assert (midway["in_flight"], midway["waiting"], midway["charged"]) == (2, 3, 5)
    assert midway["requests_open"] == 5  # what the clients keep in flight: running + held
    assert elapsed >= 0.85  # three rounds of 0.3 s: 2 + 2 + 1
    books = state_of(app).snapshot()
    assert (books["max_in_flight"], books["max_requests_open"], books["net_charged"]) == (2, 5, 5)
    assert books["requests_open"] == 0
    assert (books["delivered"], books["balance"]) == (5, 95)


def test_queue_limit_reached_refunds(make_app):
    app = make_app(plan_concurrency=0, queue_limit=1, latency=0.3)

    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return list(await asyncio.gather(*(post(http, sample(n)) for n in range(4))))

    responses = run_async(app, scenario)
    codes = sorted((r.status_code, r.json().get("error", "")) for r in responses)
    assert codes == [(200, ""), (200, ""), (400, "queue_limit_reached"), (400, "queue_limit_reached")]
    books = state_of(app).snapshot()
    assert (books["charged"], books["refunded"], books["queue_rejected"], books["balance"]) == (4, 2, 2, 98)
    assert books["max_in_flight"] == 1


def test_server_timeout_covers_the_whole_hold_and_refunds(make_app):
    app = make_app(plan_concurrency=0, latency=0.3, server_timeout=0.5)

    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return list(await asyncio.gather(post(http, sample(1)), post(http, sample(2))))

    responses = run_async(app, scenario)
    # whichever input is validated first takes the one slot; the other times out waiting
    ok, timed_out = sorted(responses, key=lambda r: r.status_code)
    assert ok.status_code == 200
    assert (timed_out.status_code, timed_out.json()) == (500, {"error": "TIMEOUT"})
    books = state_of(app).snapshot()
    assert (books["charged"], books["refunded"], books["balance"]) == (2, 1, 99)
    winner = sample(1) if responses[0] is ok else sample(2)
    assert books["charges_by_input"] == {winner: 1}
    assert books["in_flight"] == 0 and books["waiting"] == 0


def test_worker_slower_than_server_timeout(make_app):
    app = make_app(latency=0.5, server_timeout=0.1)
    response = run_async(app, lambda http: post(http, sample(1)))
    assert (response.status_code, response.json()) == (500, {"error": "TIMEOUT"})
    assert state_of(app).snapshot()["net_charged"] == 0


def test_free_answers_need_no_slot(make_app):
    app = make_app(plan_concurrency=0, latency=0.4)
    state = state_of(app)
    done = next(o for o in state.outputs.values() if o.upscaled_name)

    async def scenario(http: httpx.AsyncClient) -> float:
        busy = asyncio.create_task(post(http, sample(1)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert (await post(http, done.id)).status_code == 200
        took = time.monotonic() - started
        await busy
        return took

    assert run_async(app, scenario) < 0.3


def _single(app, input_: str = "http://testserver/samples/16x16.png") -> httpx.Response:
    return run_async(app, lambda http: post(http, input_))


def test_fault_timeout_refunds(make_app):
    app = make_app(faults={"timeout": 1})
    response = _single(app)
    assert (response.status_code, response.json()) == (500, {"error": "TIMEOUT"})
    books = state_of(app).snapshot()
    assert (books["charged"], books["refunded"], books["faults_injected"]) == (1, 1, {"timeout": 1})


def test_fault_worker_failure_refunds(make_app):
    app = make_app(faults={"worker_failure": 1})
    response = _single(app)
    assert (response.status_code, response.json()) == (500, {"error": UNKNOWN_ERROR})
    books = state_of(app).snapshot()
    assert (books["charged"], books["refunded"], books["balance"]) == (1, 1, 100)
    assert books["faults_injected"] == {"worker_failure": 1}


def test_fault_bad_gateway_is_html_and_free(make_app):
    app = make_app(faults={"bad_gateway": 1})
    response = _single(app)
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text
    assert state_of(app).snapshot()["charged"] == 0


def test_fault_spurious_429(make_app):
    app = make_app(faults={"spurious_429": 1})
    response = _single(app)
    assert (response.status_code, response.text) == (429, "Too Many Requests")
    assert response.headers["retry-after"] == "1"
    books = state_of(app).snapshot()
    assert books["charged"] == 0 and books["faults_injected"] == {"spurious_429": 1}


def test_fault_slow_answers_late_but_succeeds(make_app):
    app = make_app(faults={"slow": 1}, slow_seconds=0.3)
    started = time.monotonic()
    response = _single(app)
    assert response.status_code == 200 and time.monotonic() - started >= 0.3
    assert state_of(app).snapshot()["net_charged"] == 1


def test_faults_do_not_apply_to_bad_inputs_or_other_routes(make_app):
    app = make_app(faults={"bad_gateway": 1})
    response = _single(app, "no url")
    assert response.status_code == 502  # the proxy answers before the server looks at the input

    app = make_app(faults={"worker_failure": 1})
    response = _single(app, "no url")
    assert response.json() == {"error": "invalid_image_url"}
    health = run_async(app, lambda http: http.get("/v1/health"))
    assert health.status_code == 200
    assert state_of(app).snapshot()["faults_injected"] == {}


def test_fault_sequence_is_reproducible_regardless_of_order(make_app):
    faults = {"timeout": 0.2, "worker_failure": 0.2, "bad_gateway": 0.2, "spurious_429": 0.2}
    inputs = [sample(n) for n in range(6)]

    def outcomes(order: list[str], concurrent: bool) -> dict[str, list[int]]:
        app = make_app(faults=faults, fault_seed=1234, latency=0.01)

        async def scenario(http: httpx.AsyncClient) -> dict[str, list[int]]:
            seen: dict[str, list[int]] = {i: [] for i in inputs}
            for _round in range(3):
                if concurrent:
                    responses = await asyncio.gather(*(post(http, i) for i in order))
                else:
                    responses = [await post(http, i) for i in order]
                for input_, response in zip(order, responses, strict=True):
                    seen[input_].append(response.status_code)
            return seen

        return run_async(app, scenario)

    sequential = outcomes(inputs, concurrent=False)
    shuffled = outcomes(list(reversed(inputs)), concurrent=True)
    assert sequential == shuffled
    statuses = {s for codes in sequential.values() for s in codes}
    assert statuses >= {500, 502, 429}
