"""End to end: real ``airflow dags test`` runs in a throwaway AIRFLOW_HOME (see AirflowSandbox)."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from airflow_provider_stablecog.testing import AirflowSandbox, SandboxError
from airflow_provider_stablecog.testing.airflow_sandbox import decode_xcom

pytestmark = pytest.mark.e2e

RUN_TIMEOUT = 300.0

SMOKE_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import datetime

    from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
    from airflow.sdk import DAG, task

    with DAG("sandbox_smoke", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:

        @task
        def produce(dag_run=None):
            print("SANDBOX-MARKER-LINE")
            return {"n": int(dag_run.conf.get("n", 1)), "word": "hello"}

        @task(retries=1, retry_delay=datetime.timedelta(seconds=1))
        def flaky(payload, ti=None):
            if ti.try_number < 2:
                raise RuntimeError("first try fails on purpose")
            return payload["n"] * 10

        @task
        def double(x):
            return x * 2

        # rendered when the task starts, so it is always in the future: the sensor must defer
        wait = DateTimeSensorAsync(
            task_id="wait",
            target_time="{{ macros.datetime.utcnow() + macros.timedelta(seconds=2) }}",
        )
        flaky(produce()) >> wait >> double.expand(x=[1, 2, 3])
    """
)

FAILING_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import datetime

    from airflow.sdk import DAG, task

    with DAG("sandbox_fails", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:

        @task
        def boom():
            raise ValueError("this task always fails")

        @task
        def after():
            return 1

        boom() >> after()
    """
)


def test_decode_xcom():
    assert decode_xcom('{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode_xcom(7) == 7  # SQLite stores numeric JSON as a number
    assert decode_xcom('"7"') == "7"
    assert decode_xcom("true") is True
    assert decode_xcom(None) is None


def test_environment_is_isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/somewhere/else")
    monkeypatch.setenv("AIRFLOW_CONN_LEAKED", "http://x")
    box = AirflowSandbox(tmp_path / "home", tmp_path / "dags", env={"AIRFLOW_CONN_MINE": "{}"})
    box.set_connection_env("stablecog_default", {"conn_type": "stablecog", "password": "k"})
    env = box.environ({"EXTRA": "1"})
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str((tmp_path / "dags").resolve())
    home = (tmp_path / "home").resolve()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home}/airflow.db"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert "AIRFLOW_CONN_LEAKED" not in env
    assert env["AIRFLOW_CONN_MINE"] == "{}"
    assert '"password": "k"' in env["AIRFLOW_CONN_STABLECOG_DEFAULT"]
    assert env["EXTRA"] == "1"


def test_migrate_reuses_a_template(tmp_path, sandbox, migrated_db_template):
    assert migrated_db_template.is_file()  # the fixture's sandbox migrated and saved it
    other = AirflowSandbox(tmp_path / "other", tmp_path / "other-dags")
    seconds = other.migrate(template=migrated_db_template)
    assert seconds < 2
    assert other.query("SELECT count(*) AS n FROM dag_run")[0]["n"] == 0


def test_dags_test_runs_a_dag_and_reads_back_states_and_xcoms(sandbox):
    sandbox.write_dag("sandbox_smoke", SMOKE_DAG)
    result = sandbox.dags_test("sandbox_smoke", conf={"n": 4}, timeout=RUN_TIMEOUT).check()

    assert result.returncode == 0
    assert result.state == "success"
    assert result.run_id and result.run_id.startswith("manual__")
    assert result.task_states() == {
        "produce": "success",
        "flaky": "success",
        "wait": "success",
        "double[0]": "success",
        "double[1]": "success",
        "double[2]": "success",
    }
    assert result.xcom("produce") == {"n": 4, "word": "hello"}
    assert result.xcom("flaky") == 40
    assert sandbox.xcom("sandbox_smoke", "double", result.run_id, map_index=2) == 6
    assert sandbox.xcoms("sandbox_smoke")[("double", 1, "return_value")] == 4

    # retries: the first try failed, was kept in the history, and the second try ran
    flaky = next(ti for ti in sandbox.task_instances("sandbox_smoke") if ti.task_id == "flaky")
    assert (flaky.try_number, flaky.max_tries) == (2, 1)
    assert sandbox.task_history("sandbox_smoke") == [
        {"task_id": "flaky", "map_index": -1, "try_number": 1, "state": "failed"}
    ]
    # deferral: `airflow dags test` runs the trigger inline, then resumes the task
    assert "running trigger in line" in result.output
    # task logs are in the command's output (dags test writes no task log files)
    assert "SANDBOX-MARKER-LINE" in result.output
    assert "SANDBOX-MARKER-LINE" in sandbox.collected_text(result)
    assert sandbox.dag_runs("sandbox_smoke")[0]["state"] == "success"


def test_failed_run_is_reported(sandbox):
    sandbox.write_dag("sandbox_fails", FAILING_DAG)
    result = sandbox.dags_test("sandbox_fails", timeout=RUN_TIMEOUT)
    assert not result.ok
    assert result.returncode == 1
    assert result.state == "failed"
    assert result.task_states() == {"boom": "failed", "after": "upstream_failed"}
    assert "this task always fails" in result.output
    with pytest.raises(SandboxError, match="sandbox_fails failed"):
        result.check()


# -- with the Stablecog emulator --------------------------------------------------------------


def _run_emulator():
    try:
        from airflow_provider_stablecog.emulator.testing import run_emulator
    except ImportError as exc:  # the emulator is built separately
        pytest.skip(f"the emulator is not available (airflow_provider_stablecog.emulator.testing): {exc}")
    return run_emulator


CREDITS_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import datetime

    from airflow.sdk import DAG

    from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

    with DAG("credits_gate", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
        StablecogCreditsSensor(
            task_id="wait_for_credits",
            min_credits=5,
            poke_interval=2,
            timeout=120,
            deferrable=True,
            retries=2,
        )
    """
)


def _credits_calls(emulator) -> int:
    return int(emulator.ledger().get("requests_by_route", {}).get("GET /v1/credits", 0))


def test_deferrable_credits_sensor_waits_for_a_top_up(sandbox):
    run_emulator = _run_emulator()
    with run_emulator(credits=2) as emulator:
        sandbox.set_connection_env("stablecog_default", emulator.connection_json())
        sandbox.write_dag("credits_gate", CREDITS_DAG)
        topped_up = threading.Event()

        def top_up():
            # after the task's own poke and at least one poll of the trigger: it is deferred and waiting
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline and _credits_calls(emulator) < 2:
                time.sleep(0.2)
            emulator.add_credits(10)
            topped_up.set()

        helper = threading.Thread(target=top_up, daemon=True)
        helper.start()
        result = sandbox.dags_test("credits_gate", timeout=RUN_TIMEOUT)
        helper.join(10)

        assert topped_up.is_set()
        result.check()
        assert result.task_states() == {"wait_for_credits": "success"}
        assert result.xcom("wait_for_credits") == 12  # the remaining credits the trigger saw
        assert "running trigger in line" in result.output
        assert _credits_calls(emulator) >= 3
        assert emulator.ledger()["net_charged"] == 0  # checking credits costs nothing
        assert emulator.api_key not in sandbox.collected_text(result)


def test_credits_sensor_fails_at_once_on_a_bad_key(sandbox):
    run_emulator = _run_emulator()
    with run_emulator(credits=100) as emulator:
        bad = emulator.connection_json().replace(emulator.api_key, "sc-" + "0" * 64)
        sandbox.set_connection_env("stablecog_default", bad)
        sandbox.write_dag("credits_gate", CREDITS_DAG)
        result = sandbox.dags_test("credits_gate", timeout=RUN_TIMEOUT)

        assert result.state == "failed"
        assert result.task_states() == {"wait_for_credits": "failed"}
        ti = sandbox.task_instances("credits_gate")[0]
        assert ti.try_number == 1  # AirflowFailException: no retry although retries=2
        assert "Waiting will not fix a bad key" in result.output
        assert _credits_calls(emulator) == 1
