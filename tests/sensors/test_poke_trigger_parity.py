"""The poking sensor and the deferred trigger read the credits through the same hook, client and
classification: fed the same odd answers, they end the same way (issue #15)."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_provider_stablecog.compat import AirflowFailException
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor
from airflow_provider_stablecog.triggers.credits import StablecogCreditsTrigger
from tests.triggers.test_credits import CreditsServer, only_event

HTML = {"Content-Type": "text/html"}

ANSWERS = [
    # (first answer, expected outcome); later answers are a balance that is enough
    pytest.param((200, HTML, "<html>captive portal</html>"), "wait", id="non-json-200"),
    pytest.param((200, {}, '{"total_remaining_credits": 9'), "wait", id="truncated-json-200"),
    pytest.param(
        (429, {"Retry-After": "0.2", "Content-Type": "text/plain"}, "Too Many Requests"), "wait", id="429"
    ),
    pytest.param((500, {}, '{"error":"unknown_error"}'), "wait", id="500"),
    pytest.param((500, {}, '{"error":"TIMEOUT"}'), "wait", id="500-TIMEOUT"),
    pytest.param((502, HTML, "<html>bad gateway</html>"), "wait", id="502"),
    pytest.param((503, HTML, "<html>unavailable</html>"), "wait", id="503"),
    pytest.param((401, {}, '{"error":"Unauthorized"}'), "fatal", id="401"),
    pytest.param((403, {}, '{"error":"user_banned"}'), "fatal", id="403"),
    pytest.param((404, {}, "not found"), "error", id="404"),
    pytest.param((400, {}, '{"error":"something_new"}'), "error", id="400-unknown"),
]


@pytest.fixture
def server(stablecog_conn):
    srv = CreditsServer(balance=5)
    srv.thread.start()
    stablecog_conn(host=srv.base_url)
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(5)


def poke_outcome(server: CreditsServer, answer) -> str:
    server.script = [answer]
    sensor = StablecogCreditsSensor(task_id="wait", min_credits=1, deferrable=False)
    try:
        result = sensor.poke({})
    except AirflowFailException:
        return "fatal"
    except Exception:
        return "error"
    assert result.is_done is False, "the first answer is never a balance here"
    assert server.hit_count() == 1  # one poke, one request
    return "wait"


def trigger_outcome(server: CreditsServer, answer) -> str:
    server.script = [answer]
    before = server.hit_count()
    trig = StablecogCreditsTrigger("stablecog_default", 1, 0.05, time.time() + 30)
    payload = asyncio.run(only_event(trig))
    if payload["status"] == "success":
        assert server.hit_count() - before == 2  # the odd answer, then the balance
        return "wait"
    assert payload["status"] == "error", payload
    return "fatal" if payload["fatal"] else "error"


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_poke_and_trigger_agree(server, answer, expected):
    poked = poke_outcome(server, answer)
    server.hits.clear()
    deferred = trigger_outcome(server, answer)
    assert (poked, deferred) == (expected, expected)
