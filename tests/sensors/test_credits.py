"""StablecogCreditsSensor: the sync path against requests-mock, deferral, and execute_complete."""

from __future__ import annotations

import json
import time

import pytest
from airflow.sdk import PokeReturnValue

from airflow_provider_stablecog.compat import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from airflow_provider_stablecog.exceptions import StablecogAPIError
from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor
from airflow_provider_stablecog.triggers.credits import StablecogCreditsTrigger
from airflow_provider_stablecog.utils.storage import write_manifest
from tests.conftest import API_KEY, BASE_URL

CREDITS_URL = f"{BASE_URL}/v1/credits"
OUTPUT_ID = "6f1c1f4e-3b0a-4a53-9d55-0c5e3e2b8c11"


def balance(n: int) -> dict:
    return {"json": {"total_remaining_credits": n, "credits": []}, "status_code": 200}


@pytest.fixture
def conn(stablecog_conn):
    """No client-side retries and no rate limit: one poke is exactly one request."""
    stablecog_conn(extra={"max_retries": 0, "rate_limit": 0})


def make(**kwargs) -> StablecogCreditsSensor:
    kwargs.setdefault("task_id", "wait_for_credits")
    kwargs.setdefault("deferrable", False)
    return StablecogCreditsSensor(**kwargs)


# -- construction ------------------------------------------------------------------------------


def test_defaults():
    sensor = make(min_credits=1)
    assert sensor.stablecog_conn_id == "stablecog_default"
    assert sensor.poke_interval == 60
    assert sensor.reserve == 0
    assert set(sensor.template_fields) == {
        "min_credits",
        "inputs",
        "prompts",
        "generation_defaults",
        "destination",
        "reserve",
        "max_credits",
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({}, "neither", id="neither"),
        pytest.param({"min_credits": 3, "inputs": ["https://x/a.png"]}, "both", id="both"),
        pytest.param({"min_credits": 3, "destination": "/tmp/out"}, "only used with inputs", id="dest"),
        pytest.param({"min_credits": -1}, "min_credits must be >= 0", id="negative-literal"),
        pytest.param({"min_credits": 2.5}, "whole number", id="float-literal"),
        pytest.param({"min_credits": 1, "reserve": -2}, "reserve must be >= 0", id="negative-reserve"),
    ],
)
def test_init_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_templates_are_not_validated_in_init():
    sensor = make(min_credits="{{ params.n }}", reserve="{{ params.r }}")
    assert sensor.min_credits == "{{ params.n }}"


# -- poke ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "min_credits", "reserve", "done"),
    [
        pytest.param(10, 5, 0, True, id="enough"),
        pytest.param(5, 5, 0, True, id="exactly"),
        pytest.param(4, 5, 0, False, id="short"),
        pytest.param(7, 5, 2, True, id="reserve-met"),
        pytest.param(6, 5, 2, False, id="reserve-short"),
        pytest.param(0, 0, 0, True, id="zero"),
    ],
)
def test_poke_min_credits(conn, requests_mock, remaining, min_credits, reserve, done):
    requests_mock.get(CREDITS_URL, **balance(remaining))
    result = make(min_credits=min_credits, reserve=reserve).poke({})
    assert isinstance(result, PokeReturnValue)
    assert result.is_done is done
    assert result.xcom_value == remaining
    assert requests_mock.call_count == 1
    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_poke_logs_needed_and_remaining(conn, requests_mock, capsys):
    # Airflow 3 logs through structlog to stdout (caplog sees nothing)
    requests_mock.get(CREDITS_URL, **balance(4))
    make(min_credits=5, reserve=1).poke({})
    out = capsys.readouterr().out
    assert "4 remaining, 6 needed (5 for the batch + 1 reserve" in out
    assert "short by 2" in out


def test_rendered_string_values_are_accepted(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(8))
    sensor = make(min_credits="{{ params.n }}", reserve="{{ params.r }}")
    sensor.min_credits, sensor.reserve = "6", " 2 "  # as Jinja renders them
    assert sensor.poke({}).is_done is True


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        pytest.param("min_credits", "-3", "min_credits must be >= 0, got -3", id="negative"),
        pytest.param("min_credits", "five", "min_credits must be a whole number.*'five'", id="text"),
        pytest.param("min_credits", 2.5, "min_credits must be a whole number.*2.5", id="float"),
        pytest.param("min_credits", None, "min_credits must be a whole number.*None", id="none"),
        pytest.param("min_credits", True, "min_credits must be a whole number.*True", id="bool"),
        pytest.param("reserve", "-1", "reserve must be >= 0", id="negative-reserve"),
        pytest.param("reserve", [1], "reserve must be a whole number", id="list-reserve"),
    ],
)
def test_bad_rendered_values_fail(conn, requests_mock, field, value, match):
    requests_mock.get(CREDITS_URL, **balance(100))
    sensor = make(min_credits="{{ params.n }}")
    sensor.min_credits = "1"
    setattr(sensor, field, value)
    with pytest.raises(AirflowFailException, match=match):
        sensor.poke({})
    assert requests_mock.call_count == 0  # validated before any request


# -- inputs-based requirement ---------------------------------------------------------------------


def test_inputs_need_one_credit_per_unique_valid_item(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(3))
    # output IDs already upscaled would be free: none of ours is
    requests_mock.get(f"{BASE_URL}/v1/image/generation/outputs", json={"outputs": [], "next_cursor": None})
    inputs = [
        "https://img.example/a.png",
        "https://img.example/a.png",  # duplicate: free
        OUTPUT_ID,
        OUTPUT_ID.upper(),  # the same output ID: free
        "https://img.example/c.png",
        "relative/path.png",  # invalid: never sent, free
        "",  # invalid
        "data:image/png;base64,AAAA",  # invalid
    ]
    sensor = make(inputs=inputs)
    requirement = sensor.requirement()
    assert (requirement.needed, requirement.total) == (3, 3)
    assert "8 inputs: 3 unique valid, 3 invalid" in requirement.detail
    assert sensor.poke({}).is_done is True
    sensor.reserve = 1
    assert sensor.poke({}).is_done is False


def test_the_requirement_is_capped_at_the_gated_tasks_budget(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(4))
    inputs = [f"https://img.example/{i}.png" for i in range(6)]
    sensor = make(inputs=inputs, max_credits=4)
    requirement = sensor.requirement()
    assert (requirement.needed, requirement.total) == (4, 4)
    assert "6 needed, capped at max_credits=4" in requirement.detail
    assert sensor.poke({}).is_done is True  # the task spends at most 4: 4 credits are enough
    sensor.max_credits = "10"  # templated: rendered to a string
    assert sensor.requirement().needed == 6 and "within max_credits=10" in sensor.requirement().detail
    sensor.max_credits = "lots"
    with pytest.raises(AirflowFailException, match="max_credits must be a whole number"):
        sensor.requirement()


def test_one_string_input_is_a_batch_of_one(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(1))
    sensor = make(inputs="https://img.example/a.png")
    assert sensor.requirement().needed == 1
    assert sensor.poke({}).is_done is True


def test_done_items_in_destination_need_no_credit(conn, requests_mock, tmp_path):
    requests_mock.get(CREDITS_URL, **balance(1))
    done, missing_file, failed = (f"https://img.example/{n}.png" for n in ("done", "gone", "failed"))
    (tmp_path / "done.jpg").write_bytes(b"\xff\xd8jpeg")
    write_manifest(
        tmp_path,
        [
            {
                "input": done,
                "key": done,
                "status": "upscaled",
                "url": "https://b.test/1.jpeg",
                "path": "done.jpg",
            },
            {
                "input": missing_file,
                "key": missing_file,
                "status": "upscaled",
                "url": "https://b.test/2.jpeg",
                "path": "gone.jpg",
            },
            {"input": failed, "key": failed, "status": "failed", "error": "invalid_image_url"},
            {
                "key": "https://img.example/not-in-batch.png",
                "status": "upscaled",
                "url": "https://b.test/3.jpeg",
                "path": "done.jpg",
            },
        ],
    )
    batch = [done, missing_file, failed, "https://img.example/new.png"]
    sensor = make(inputs=batch, destination=str(tmp_path))
    requirement = sensor.requirement()
    # `done` and `gone` were paid for (a result URL): the operator re-downloads a missing file for free
    assert requirement.needed == 2
    assert "2 already " in requirement.detail  # ... paid for / upscaled in the destination
    assert sensor.poke({}).is_done is False
    requests_mock.get(CREDITS_URL, **balance(2))
    assert sensor.poke({}).is_done is True


def test_everything_done_needs_nothing(conn, requests_mock, tmp_path):
    requests_mock.get(CREDITS_URL, **balance(0))
    url = "https://img.example/a.png"
    (tmp_path / "a.jpg").write_bytes(b"x")
    write_manifest(
        tmp_path,
        [{"input": url, "key": url, "status": "upscaled", "url": "https://b.test/a.jpeg", "path": "a.jpg"}],
    )
    result = make(inputs=[url, url], destination=str(tmp_path)).poke({})
    assert (result.is_done, result.xcom_value) == (True, 0)


def test_empty_rendered_destination_means_none(conn, requests_mock, tmp_path, monkeypatch):
    requests_mock.get(CREDITS_URL, **balance(0))
    url = "https://img.example/a.png"
    (tmp_path / "a.jpg").write_bytes(b"x")
    write_manifest(
        tmp_path,
        [{"input": url, "key": url, "status": "upscaled", "url": "https://b.test/a.jpeg", "path": "a.jpg"}],
    )
    monkeypatch.chdir(tmp_path)  # "" must not silently mean the working directory
    sensor = make(inputs=[url], destination="{{ params.destination }}")
    sensor.destination = ""
    assert sensor.requirement().needed == 1


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        pytest.param({"a": "https://x/a.png"}, "inputs is a dict", id="dict"),
        pytest.param(42, "inputs must be a list", id="int"),
    ],
)
def test_bad_rendered_inputs_fail(conn, requests_mock, inputs, match):
    sensor = make(inputs=["placeholder"])
    sensor.inputs = inputs
    with pytest.raises(AirflowFailException, match=match):
        sensor.poke({})


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(401, {"error": "Unauthorized"}, id="401"),
        pytest.param(403, {"error": "user_banned"}, id="403"),
    ],
)
def test_auth_error_fails_at_once(conn, requests_mock, status, body):
    requests_mock.get(CREDITS_URL, status_code=status, json=body)
    with pytest.raises(AirflowFailException) as info:
        make(min_credits=1).poke({})
    message = str(info.value)
    assert "rejected the API key of connection 'stablecog_default'" in message
    assert "Waiting will not fix a bad key" in message
    assert API_KEY not in message


def test_auth_error_with_soft_fail_skips(conn, requests_mock):
    requests_mock.get(CREDITS_URL, status_code=401, json={"error": "Unauthorized"})
    with pytest.raises(AirflowSkipException):
        make(min_credits=1, soft_fail=True, poke_interval=0).execute({})


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            {"status_code": 429, "text": "Too Many Requests", "headers": {"Retry-After": "1"}}, id="429"
        ),
        pytest.param({"status_code": 500, "json": {"error": "unknown_error"}}, id="500"),
        pytest.param({"status_code": 503, "text": "<html>bad gateway</html>"}, id="503"),
    ],
)
def test_transient_errors_keep_waiting(conn, requests_mock, response, capsys):
    requests_mock.get(CREDITS_URL, **response)
    result = make(min_credits=1).poke({})
    assert result.is_done is False
    assert "will check again" in capsys.readouterr().out


def test_transient_error_then_success_in_execute(conn, requests_mock):
    requests_mock.get(CREDITS_URL, [{"status_code": 503, "text": "down"}, balance(2), balance(9)])
    assert make(min_credits=5, poke_interval=0).execute({}) == 9  # the XCom value
    assert requests_mock.call_count == 3


def test_unknown_answer_is_raised(conn, requests_mock):
    requests_mock.get(CREDITS_URL, status_code=404, text="not found")
    with pytest.raises(StablecogAPIError):
        make(min_credits=1).poke({})


def test_connection_without_key_fails(stablecog_conn, requests_mock):
    stablecog_conn(password="")
    with pytest.raises(AirflowFailException, match="no API key"):
        make(min_credits=1).poke({})


def test_poke_mode_times_out(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(0))
    with pytest.raises(AirflowSensorTimeout):
        make(min_credits=1, poke_interval=0.01, timeout=0.05).execute({})


# -- deferrable ----------------------------------------------------------------------------------


def test_deferrable_returns_at_once_when_enough(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(12))
    assert make(min_credits=5, deferrable=True).execute({}) == 12
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(balance(2), id="short"),
        pytest.param({"status_code": 502, "text": "bad gateway"}, id="transient"),
    ],
)
def test_deferrable_pokes_once_then_defers(conn, requests_mock, first):
    requests_mock.get(CREDITS_URL, **first)
    sensor = make(min_credits=5, reserve=1, deferrable=True, poke_interval=30, timeout=600)
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    assert requests_mock.call_count == 1
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout.total_seconds() == 600
    assert isinstance(deferred.trigger, StablecogCreditsTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "airflow_provider_stablecog.triggers.credits.StablecogCreditsTrigger"
    assert kwargs["conn_id"] == "stablecog_default"
    assert kwargs["required"] == 6
    assert kwargs["poke_interval"] == 30.0
    assert before + 600 <= kwargs["end_time"] <= time.time() + 600  # absolute, not a duration
    json.dumps(kwargs)


def test_deferrable_auth_error_fails_before_deferring(conn, requests_mock):
    requests_mock.get(CREDITS_URL, status_code=401, json={"error": "Unauthorized"})
    with pytest.raises(AirflowFailException, match="Waiting will not fix"):
        make(min_credits=5, deferrable=True).execute({})


def test_deferrable_bad_value_with_soft_fail_skips(conn, requests_mock):
    sensor = make(min_credits="{{ x }}", deferrable=True, soft_fail=True)
    sensor.min_credits = "-4"
    with pytest.raises(AirflowSkipException, match="soft_fail") as info:
        sensor.execute({})
    assert "min_credits must be >= 0" in str(info.value.__cause__)  # Airflow's own soft_fail handling
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param({"soft_fail": True}, AirflowSkipException, id="soft_fail"),
        pytest.param({"never_fail": True}, AirflowSkipException, id="never_fail"),
        pytest.param({}, AirflowFailException, id="neither"),
    ],
)
def test_deferrable_first_check_uses_airflows_fail_handling(conn, requests_mock, flags, expected):
    requests_mock.get(CREDITS_URL, status_code=401, json={"error": "Unauthorized"})
    with pytest.raises(expected):
        make(min_credits=5, deferrable=True, **flags).execute({})


def test_deferrable_silent_fail_keeps_poking_then_defers(conn, requests_mock):
    """silent_fail is Airflow's: an unknown answer on the first check is logged and poked again."""
    requests_mock.get(CREDITS_URL, [{"status_code": 404, "text": "not found"}, balance(1)])
    with pytest.raises(TaskDeferred):
        make(min_credits=5, deferrable=True, silent_fail=True, poke_interval=0.01).execute({})
    assert requests_mock.call_count == 2


def test_no_own_soft_fail_handling():
    """soft_fail/never_fail/silent_fail are left to BaseSensorOperator (execute, resume_execution)."""
    import inspect

    source = inspect.getsource(StablecogCreditsSensor)
    for flag in ("soft_fail", "never_fail", "silent_fail"):
        assert f"self.{flag}" not in source, flag
    assert "execute" not in StablecogCreditsSensor.__dict__  # Airflow's poke loop in every mode


def test_deferrable_default_comes_from_config():
    from airflow_provider_stablecog.compat import conf

    sensor = StablecogCreditsSensor(task_id="t", min_credits=1)
    assert sensor.deferrable is conf.getboolean("operators", "default_deferrable", fallback=False)


# -- execute_complete ----------------------------------------------------------------------------


def test_execute_complete_success_returns_remaining():
    event = {"status": "success", "remaining_credits": 17, "required": 5}
    assert make(min_credits=5).execute_complete({}, event) == 17


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(None, id="none"),
        pytest.param("done", id="string"),
        pytest.param({"status": "weird"}, id="unknown-status"),
        pytest.param({"status": "success"}, id="success-without-count"),
        pytest.param({"status": "success", "remaining_credits": "7"}, id="success-with-string"),
    ],
)
def test_execute_complete_validates_event(event):
    with pytest.raises(AirflowException, match="event"):
        make(min_credits=5).execute_complete({}, event)


def test_execute_complete_timeout():
    event = {"status": "timeout", "message": "Timed out waiting for 5 Stablecog credits", "required": 5}
    with pytest.raises(AirflowSensorTimeout, match="Timed out waiting for 5"):
        make(min_credits=5).execute_complete({}, event)


@pytest.mark.parametrize(
    ("fatal", "expected"),
    [pytest.param(True, AirflowFailException, id="fatal"), pytest.param(False, AirflowException, id="other")],
)
def test_execute_complete_error(fatal, expected):
    message = "Could not read the credits: Unauthorized (HTTP 401)"
    event = {"status": "error", "fatal": fatal, "message": message}
    with pytest.raises(expected, match="Unauthorized") as info:
        make(min_credits=5).execute_complete({}, event)
    assert isinstance(info.value, AirflowFailException) is fatal


@pytest.mark.parametrize("status", ["timeout", "error"])
@pytest.mark.parametrize("flag", ["soft_fail", "never_fail"])
def test_resumed_failure_with_soft_fail_skips(status, flag):
    """Airflow's resume_execution turns execute_complete's failure into a skip."""
    sensor = make(min_credits=5, **{flag: True})
    event = {"status": status, "message": "m", "fatal": True}
    with pytest.raises(AirflowSkipException, match=flag):
        sensor.resume_execution("execute_complete", {"event": event}, {})
    with pytest.raises(AirflowException):  # without the flag it fails
        make(min_credits=5).resume_execution("execute_complete", {"event": event}, {})


def test_resumed_success_returns_remaining():
    event = {"status": "success", "remaining_credits": 17, "required": 5}
    assert (
        make(min_credits=5, soft_fail=True).resume_execution("execute_complete", {"event": event}, {}) == 17
    )


def test_resume_execution_turns_trigger_timeout_into_sensor_timeout():
    # what the scheduler does when defer(timeout=...) expires before the trigger's own end_time
    with pytest.raises(AirflowSensorTimeout):
        make(min_credits=5).resume_execution("__fail__", {"error": "Trigger timeout"}, {})
    with pytest.raises(AirflowSkipException):
        make(min_credits=5, soft_fail=True).resume_execution("__fail__", {"error": "Trigger timeout"}, {})


def test_module_import_is_cheap():
    from tests.importcost import loaded_after_import

    modules = ["airflow_provider_stablecog.sensors.credits", "airflow_provider_stablecog.triggers.credits"]
    assert loaded_after_import(modules, ("requests", "PIL", "airflow_provider_stablecog.client")) == []


# -- the credit plan of a fan-out (credit_plan XCom) ---------------------------------------------


class _TI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_a_successful_check_of_inputs_pushes_the_credit_plan(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(9))
    sensor = make(inputs=["https://img.example/a.png", "https://img.example/b.png"], reserve=4)
    ti = _TI()
    assert sensor.poke({"ti": ti}).is_done is True
    assert ti.pushed == {"credit_plan": {"remaining": 9, "needed": 2, "reserve": 4}}


def test_no_credit_plan_while_waiting_or_for_min_credits(conn, requests_mock):
    requests_mock.get(CREDITS_URL, **balance(1))
    ti = _TI()
    assert make(inputs=["https://img.example/a.png"], reserve=4).poke({"ti": ti}).is_done is False
    assert make(min_credits=1).poke({"ti": ti}).is_done is True
    assert ti.pushed == {}


def test_the_deferred_path_pushes_the_credit_plan_too():
    ti = _TI()
    event = {"status": "success", "remaining_credits": 17, "required": 7}
    assert make(inputs=["https://img.example/a.png"], reserve=2).execute_complete({"ti": ti}, event) == 17
    assert ti.pushed == {"credit_plan": {"remaining": 17, "needed": 5, "reserve": 2}}
