"""StablecogCreditsTrigger: serialize() round trip and run() against a real loopback server."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_stablecog.triggers.credits import StablecogCreditsTrigger
from tests.conftest import API_KEY

CLASS_PATH = "airflow_provider_stablecog.triggers.credits.StablecogCreditsTrigger"
RUN_TIMEOUT = 15.0


class CreditsServer:
    """A threaded HTTP server on 127.0.0.1:0 answering ``GET /v1/credits``.

    ``balance`` can be changed while a trigger waits; ``script`` holds answers served first,
    as ``(status, headers, body)``; ``hits`` records the monotonic time of every request.
    """

    def __init__(self, balance: int = 0) -> None:
        self.balance = balance
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.hits: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = server.answer(self.path, self.headers.get("Authorization"))
                encoded = body.encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def answer(self, path: str, auth: str | None) -> tuple[int, dict[str, str], str]:
        with self.lock:
            self.hits.append(time.monotonic())
            if path != "/v1/credits":
                return 404, {}, '{"error":"not_found"}'
            if auth != f"Bearer {API_KEY}":
                return 401, {}, '{"error":"Unauthorized"}'
            if self.script:
                return self.script.pop(0)
            return 200, {}, json.dumps({"total_remaining_credits": self.balance, "credits": []})

    def hit_count(self) -> int:
        with self.lock:
            return len(self.hits)


@pytest.fixture
def server(stablecog_conn):
    srv = CreditsServer()
    srv.thread.start()
    stablecog_conn(host=srv.base_url)
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(5)


def trigger(required: int = 5, poke_interval: float = 0.05, in_seconds: float = 30, **kwargs):
    return StablecogCreditsTrigger(
        conn_id=kwargs.pop("conn_id", "stablecog_default"),
        required=required,
        poke_interval=poke_interval,
        end_time=time.time() + in_seconds,
    )


async def only_event(trig: StablecogCreditsTrigger) -> dict:
    """The trigger's single event; checks that run() returns right after it."""
    runner = trig.run()
    event = await asyncio.wait_for(runner.__anext__(), RUN_TIMEOUT)
    assert isinstance(event, TriggerEvent)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(runner.__anext__(), 1)
    return event.payload


# -- serialize -----------------------------------------------------------------------------------


def test_serialize_round_trip():
    original = trigger(required=7, poke_interval=2, in_seconds=3600)
    classpath, kwargs = original.serialize()
    assert classpath == CLASS_PATH
    assert set(kwargs) == {"conn_id", "required", "poke_interval", "end_time"}
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert isinstance(kwargs["required"], int)
    assert isinstance(kwargs["poke_interval"], float)
    assert abs(kwargs["end_time"] - (time.time() + 3600)) < 5  # absolute epoch time
    again = StablecogCreditsTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


def test_classpath_imports_the_class():
    from airflow.sdk.module_loading import import_string

    assert import_string(CLASS_PATH) is StablecogCreditsTrigger


@pytest.mark.parametrize(
    "end_time",
    [
        pytest.param("2030-01-02T03:04:05+00:00", id="iso"),
        pytest.param(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), id="datetime"),
        pytest.param(1893553445, id="epoch-int"),
    ],
)
def test_end_time_forms(end_time):
    _, kwargs = StablecogCreditsTrigger("c", 1, 1.0, end_time).serialize()
    assert kwargs["end_time"] == 1893553445.0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"required": -1}, ValueError, id="negative-required"),
        pytest.param({"required": 1.5}, ValueError, id="float-required"),
        pytest.param({"poke_interval": 0}, ValueError, id="zero-interval"),
        pytest.param({"end_time": "2030-01-02T03:04:05"}, ValueError, id="naive-iso"),
        pytest.param({"end_time": None}, TypeError, id="no-end"),
    ],
)
def test_invalid_arguments(kwargs, error):
    args = {"conn_id": "c", "required": 1, "poke_interval": 1.0, "end_time": time.time(), **kwargs}
    with pytest.raises(error):
        StablecogCreditsTrigger(**args)


# -- run -----------------------------------------------------------------------------------------


def test_success_at_once(server):
    server.balance = 9
    assert asyncio.run(only_event(trigger(required=5))) == {
        "status": "success",
        "remaining_credits": 9,
        "required": 5,
    }
    assert server.hit_count() == 1


def test_success_after_top_up_while_waiting(server):
    server.balance = 1

    async def scenario():
        async def top_up():
            while server.hit_count() < 3:  # the trigger has seen the low balance a few times
                await asyncio.sleep(0.01)
            server.balance = 6

        helper = asyncio.create_task(top_up())
        payload = await only_event(trigger(required=5, poke_interval=0.05))
        await helper
        return payload

    assert asyncio.run(scenario()) == {"status": "success", "remaining_credits": 6, "required": 5}
    assert server.hit_count() >= 4


def test_polls_at_poke_interval(server):
    server.balance = 0
    server.script = [(200, {}, json.dumps({"total_remaining_credits": 0}))] * 3
    server.script.append((200, {}, json.dumps({"total_remaining_credits": 5})))
    asyncio.run(only_event(trigger(required=5, poke_interval=0.2)))
    gaps = [b - a for a, b in zip(server.hits, server.hits[1:], strict=False)]
    assert len(gaps) == 3
    assert all(gap >= 0.18 for gap in gaps), gaps


def test_rate_limit_retry_after_is_honoured(server):
    server.balance = 5
    server.script = [(429, {"Retry-After": "0.6", "Content-Type": "text/plain"}, "Too Many Requests")]
    payload = asyncio.run(only_event(trigger(required=5, poke_interval=0.05)))
    assert payload["status"] == "success"
    assert len(server.hits) == 2
    assert server.hits[1] - server.hits[0] >= 0.55  # waited Retry-After, not the 0.05 s poke interval


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param((500, {}, '{"error":"unknown_error"}'), id="500"),
        pytest.param((503, {"Content-Type": "text/html"}, "<html>unavailable</html>"), id="503"),
    ],
)
def test_transient_errors_keep_polling(server, answer):
    server.balance = 5
    server.script = [answer, answer]
    payload = asyncio.run(only_event(trigger(required=5)))
    assert payload["status"] == "success"
    assert server.hit_count() == 3


def test_connection_refused_keeps_polling_until_timeout(stablecog_conn):
    srv = CreditsServer()  # bound but never served: take its port, then close it
    port = srv.httpd.server_port
    srv.httpd.server_close()
    stablecog_conn(host=f"http://127.0.0.1:{port}", extra={"connect_timeout": 1})
    payload = asyncio.run(only_event(trigger(required=1, poke_interval=0.05, in_seconds=0.3)))
    assert payload["status"] == "timeout"
    assert payload["remaining_credits"] is None


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        pytest.param(None, "Unauthorized", id="401-bad-key"),
        pytest.param((403, {}, '{"error":"user_banned"}'), "user_banned", id="403-banned"),
    ],
)
def test_auth_errors_end_with_a_fatal_error_event(server, stablecog_conn, answer, code):
    if answer is None:
        stablecog_conn(host=server.base_url, password="sc-" + "f" * 64)
    else:
        server.script = [answer]
    payload = asyncio.run(only_event(trigger(required=1)))
    assert payload["status"] == "error"
    assert payload["fatal"] is True
    assert payload["code"] == code
    assert "stablecog_default" in payload["message"]
    assert API_KEY not in payload["message"]
    assert server.hit_count() == 1  # no second try: waiting will not fix a bad key


def test_missing_connection_key_is_a_fatal_error(stablecog_conn):
    stablecog_conn(password="")
    payload = asyncio.run(only_event(trigger(required=1)))
    assert (payload["status"], payload["fatal"]) == ("error", True)
    assert "no API key" in payload["message"]


def test_unknown_answer_is_an_error_event(server):
    server.script = [(404, {}, "not here")]
    payload = asyncio.run(only_event(trigger(required=1)))
    assert (payload["status"], payload["fatal"]) == ("error", False)
    assert "http_404" in payload["message"]


def test_non_json_200_keeps_polling_like_the_poking_sensor(server):
    """A proxy page (200, not JSON) is transient for the client, so the trigger polls again."""
    server.balance = 3
    server.script = [(200, {"Content-Type": "text/html"}, "<html>captive portal</html>")]
    payload = asyncio.run(only_event(trigger(required=1)))
    assert payload["status"] == "success"
    assert server.hit_count() == 2


def test_unexpected_exception_becomes_an_error_event(server, monkeypatch):
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

    async def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(StablecogHook, "aget_credits", broken)
    payload = asyncio.run(only_event(trigger(required=1)))
    assert (payload["status"], payload["fatal"]) == ("error", False)
    assert "RuntimeError: boom" in payload["message"]


def test_one_check_is_one_request(server):
    """No client retries inside a check: the trigger polls again anyway (as the sensor's poke)."""
    server.balance = 5
    server.script = [(503, {"Content-Type": "text/html"}, "<html>down</html>")]
    hits_at_first_poll = []

    async def scenario():
        runner = trigger(required=5, poke_interval=0.5).run()
        task = asyncio.ensure_future(runner.__anext__())
        await asyncio.sleep(0.3)  # inside the first poke interval
        hits_at_first_poll.append(server.hit_count())
        event = await asyncio.wait_for(task, RUN_TIMEOUT)
        await runner.aclose()
        return event.payload

    assert asyncio.run(scenario())["status"] == "success"
    assert hits_at_first_poll == [1]


def test_end_time_passed_gives_timeout(server):
    server.balance = 2
    payload = asyncio.run(only_event(trigger(required=5, in_seconds=-1)))
    assert payload["status"] == "timeout"
    assert payload["remaining_credits"] == 2
    assert "Timed out waiting for 5 Stablecog credits" in payload["message"]
    assert server.hit_count() == 1  # one last check, then the deadline wins


def test_timeout_while_waiting_is_bounded(server):
    server.balance = 0
    started = time.monotonic()
    payload = asyncio.run(only_event(trigger(required=5, poke_interval=10, in_seconds=0.4)))
    assert payload["status"] == "timeout"
    assert time.monotonic() - started < 3  # the sleep is cut at end_time, not a full poke_interval


def test_run_does_not_block_the_event_loop(server):
    server.balance = 0

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        payload = await only_event(trigger(required=5, poke_interval=0.1, in_seconds=0.5))
        tick_task.cancel()
        return payload, ticks

    payload, ticks = asyncio.run(scenario())
    assert payload["status"] == "timeout"
    assert ticks >= 20  # the loop kept running while the trigger waited


def test_cancellation_stops_the_trigger(server):
    server.balance = 0

    async def scenario():
        task = asyncio.create_task(only_event(trigger(required=5, poke_interval=0.05)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), RUN_TIMEOUT))


def test_end_time_survives_a_restart(server):
    """A triggerer restart re-creates the trigger from its kwargs: the deadline does not move."""
    server.balance = 0
    first = StablecogCreditsTrigger("stablecog_default", 5, 0.05, time.time() + 0.3)
    _, kwargs = first.serialize()
    time.sleep(0.4)
    payload = asyncio.run(only_event(StablecogCreditsTrigger(**kwargs)))
    assert payload["status"] == "timeout"


def test_timedelta_is_not_an_end_time():
    with pytest.raises(TypeError):
        StablecogCreditsTrigger("c", 1, 1.0, timedelta(seconds=5))


def test_a_hanging_server_does_not_hold_the_trigger_past_its_deadline(stablecog_conn, monkeypatch):
    import socket

    from airflow_provider_stablecog.triggers import credits as trigger_module

    monkeypatch.setattr(trigger_module, "DEADLINE_GRACE", 0.2)
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        stablecog_conn(host=f"http://127.0.0.1:{silent.getsockname()[1]}")  # read timeout: the default
        started = time.monotonic()
        payload = asyncio.run(only_event(trigger(required=1, poke_interval=0.05, in_seconds=0.5)))
    assert payload["status"] == "timeout"
    assert time.monotonic() - started < 3
