"""A task killed mid-batch, then run again: nothing done before is paid again, no partial files.

Two ways to kill: SIGTERM to a real ``airflow dags test`` process (then a new DAG run with the
same destination), and ``on_kill`` in-process (then a retry with the same task_state_store, and
a new run with the same destination). The emulator's ``charges_by_input`` is the judge.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from airflow_provider_stablecog.compat import AirflowException
from airflow_provider_stablecog.emulator.testing import run_emulator
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.testing.airflow_sandbox import AirflowSandbox, airflow_command
from airflow_provider_stablecog.utils.storage import read_manifest
from tests.reliability.support import MemoryStateStore, destination_problems, make_context

DAG_ID = "reliability_kill_resume"
DAG_SOURCE = f'''
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_stablecog.operators.upscale import UpscaleOperator

with DAG(
    dag_id="{DAG_ID}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={{"images": Param([], type="array"), "destination": Param("/tmp/unused", type="string")}},
):
    UpscaleOperator(
        task_id="upscale",
        inputs="{{{{ params.images }}}}",
        destination="{{{{ params.destination }}}}",
        max_concurrency=2,
        progress_interval=1,
        retries=0,
    )
'''
WAIT_SECONDS = 120


def _wait_for(
    predicate, what: str, process: subprocess.Popen | None = None, timeout: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def _paid_inputs(dest: Path) -> set[str]:
    """Inputs whose manifest record holds a result URL: paid for, so never to be paid again."""
    return {r["input"] for r in read_manifest(dest).values() if r.get("url")}


@pytest.mark.e2e
def test_sigterm_to_dags_test_then_a_new_run_pays_nothing_twice(tmp_path, migrated_db_template):
    with run_emulator(latency=0.4, credits=1000, plan_concurrency=4, rate_limit=0) as emu:
        box = AirflowSandbox(tmp_path / "airflow", tmp_path / "dags")
        box.write_dag(DAG_ID, DAG_SOURCE)
        box.set_connection_env("stablecog_default", emu.connection_json(plan_concurrency=4, rate_limit=0))
        box.migrate(template=migrated_db_template)
        images = [emu.sample_url(f"{20 + i}x21.png") for i in range(40)]
        dest = tmp_path / "dest"
        conf = {"images": images, "destination": str(dest)}

        with open(tmp_path / "first-run.log", "w") as log:
            process = subprocess.Popen(
                [*airflow_command(), "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
                env=box.environ(),
                cwd=box.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                _wait_for(lambda: emu.ledger()["net_charged"] >= 6, "6 upscales were charged", process)
                process.send_signal(signal.SIGTERM)
                process.wait(WAIT_SECONDS)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        first_log = (tmp_path / "first-run.log").read_text(errors="replace")
        assert process.returncode != 0, first_log[-3000:]
        charged_first = emu.ledger()["net_charged"]
        assert charged_first < len(images), "the kill came too late to test anything"
        assert destination_problems(dest) == [], first_log[-3000:]
        paid_first = _paid_inputs(dest)
        done_first = [r["input"] for r in read_manifest(dest).values() if r["status"] == "upscaled"]
        assert paid_first and done_first, "nothing was recorded before the kill"

        again = box.dags_test(DAG_ID, conf=conf).check()

        records = again.xcom("upscale")
        assert {r["status"] for r in records} <= {"upscaled", "skipped"}
        # done before: skipped; paid but not downloaded before the kill: downloaded now, not paid
        assert {r["input"] for r in records if r["status"] == "skipped"} >= {
            i for i in paid_first if i in set(done_first)
        }
        charges = emu.ledger()["charges_by_input"]
        assert set(charges) == set(images)
        assert all(charges[i] == 1 for i in paid_first), {
            i: charges[i] for i in paid_first if charges[i] != 1
        }
        # only requests in flight at the kill (at most max_concurrency=2) can have been paid twice
        twice = {i for i, n in charges.items() if n > 1}
        assert len(twice) <= 2 and not twice & paid_first
        assert destination_problems(dest) == []
        assert not list(dest.rglob("*.part")) and [p.name for p in dest.glob(".*")] == [".stablecog"]
        assert {r["status"] for r in read_manifest(dest).values()} == {"upscaled"}
        assert len(list(dest.glob("*.jpg"))) == len(images)


@pytest.fixture
def emu(monkeypatch):
    with run_emulator(latency=0.25, credits=1000, plan_concurrency=4, rate_limit=0) as emulator:
        monkeypatch.setenv(
            "AIRFLOW_CONN_STABLECOG_DEFAULT", emulator.connection_json(plan_concurrency=4, rate_limit=0)
        )
        yield emulator


def _execute_killed_when(op, context, predicate, what: str) -> None:
    """Run ``op`` and call its ``on_kill`` from another thread once ``predicate`` holds."""

    def kill():
        _wait_for(predicate, what)
        op.on_kill()

    killer = threading.Thread(target=kill)
    killer.start()
    with pytest.raises(AirflowException, match="Stopped"):
        op.execute(context)
    killer.join()


def test_on_kill_then_retry_and_new_run_with_the_same_destination(emu, tmp_path):
    images = [emu.sample_url(f"{20 + i}x22.png") for i in range(24)]
    dest = tmp_path / "dest"
    store = MemoryStateStore()
    op = UpscaleOperator(
        task_id="u", inputs=images, destination=str(dest), max_concurrency=3, progress_interval=0
    )

    _execute_killed_when(
        op, make_context(store), lambda: emu.ledger()["net_charged"] >= 5, "5 upscales were charged"
    )
    assert destination_problems(dest) == []
    paid_first = _paid_inputs(dest)
    assert 0 < len(paid_first) < len(images)

    retry = UpscaleOperator(
        task_id="u", inputs=images, destination=str(dest), max_concurrency=3, progress_interval=0
    )
    records = retry.execute(make_context(store))  # the same task instance's state store
    assert {r["status"] for r in records} <= {"upscaled", "skipped"}
    charges = emu.ledger()["charges_by_input"]
    assert all(charges[i] == 1 for i in paid_first)
    assert sum(charges.values()) - len(images) <= 3  # at most the requests in flight at the kill
    assert destination_problems(dest) == [] and not list(dest.glob("*.part"))

    before = emu.ledger()["net_charged"]
    fresh = UpscaleOperator(task_id="u", inputs=images, destination=str(dest), progress_interval=0)
    assert {r["status"] for r in fresh.execute(make_context())} == {"skipped"}  # a new run, a new state store
    assert emu.ledger()["net_charged"] == before


def test_answer_received_during_the_stop_is_reused_by_a_new_run(emu, tmp_path):
    """An upscale answered after the stop (paid, not downloaded) is downloaded later, not paid again."""
    images = [emu.sample_url(f"{30 + i}x23.png") for i in range(6)]
    dest = tmp_path / "dest"
    emu.configure(latency=1.0)
    op = UpscaleOperator(
        task_id="u", inputs=images, destination=str(dest), max_concurrency=2, progress_interval=0
    )

    # no state store shared with the next run
    _execute_killed_when(op, make_context(), lambda: emu.ledger()["in_flight"] >= 2, "2 upscales in flight")
    manifest = read_manifest(dest)
    answered = [r for r in manifest.values() if r.get("url")]
    assert answered and all(r["status"] == "not_started" and r["error"] == "cancelled" for r in answered)
    assert all("without paying" in r["message"] for r in answered)
    paid = emu.ledger()["net_charged"]
    assert paid == len(answered)

    emu.configure(latency=0.05)
    records = UpscaleOperator(task_id="u", inputs=images, destination=str(dest), progress_interval=0).execute(
        make_context()
    )
    assert {r["status"] for r in records} <= {"upscaled", "skipped"}
    assert all(n == 1 for n in emu.ledger()["charges_by_input"].values())
    assert emu.ledger()["net_charged"] == len(images)
    assert destination_problems(dest) == []
