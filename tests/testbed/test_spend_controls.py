"""Spend controls on the real scheduler: approval before a large spend, and the retry policy."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from airflow_provider_stablecog.compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_stablecog.utils.storage import read_manifest

from .conftest import samples

pytestmark = pytest.mark.testbed

APPROVAL_DAG = "example_stablecog_approval"
WAITING = ("awaiting_input", "deferred")  # 3.3 parks the task; 3.1/3.2 defer it to the triggerer


def _answer(stack, run_id: str, option: str) -> dict:
    """Answer the approval through the public REST API, as a person's client would."""
    stack.wait_task_state(APPROVAL_DAG, run_id, "approve", WAITING, timeout=180)
    # a person answers in minutes; a test in milliseconds, before the parked task's worker exits,
    # which Airflow 3.3's scheduler takes for a finished resume and fails (see wait_worker_released)
    stack.wait_worker_released(APPROVAL_DAG, run_id, "approve")
    path = (
        f"/api/v2/dags/{APPROVAL_DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails"
    )
    request = stack.api("GET", path)  # what the person is shown
    assert request["subject"].startswith("Spend ") and "credits" in request["body"], request
    return stack.api("PATCH", path, {"chosen_options": [option]})


def test_approval_then_an_upscale_capped_at_the_approved_price(stack, emulator, tmp_path):
    emulator.reset()
    images = samples(emulator, 12, 70, 50)
    dest = tmp_path / "approved"
    run_id = stack.trigger(
        APPROVAL_DAG, conf={"images": images, "destination": str(dest), "approval_threshold": 10}
    )
    answer = _answer(stack, run_id, "Approve")
    assert answer["chosen_options"] == ["Approve"]
    stack.wait_run(APPROVAL_DAG, run_id, 300, check=True)

    body = stack.xcom(APPROVAL_DAG, run_id, "route", key="body")
    assert "**12 credits**" in body and "| balance now |" in body and images[0] in body
    assert stack.xcom(APPROVAL_DAG, run_id, "price")["credits_needed"] == 12
    summary = stack.xcom(APPROVAL_DAG, run_id, "upscale", key="summary")
    assert summary["budget_max_credits"] == 12 and summary["budget_spent"] == 12
    assert emulator.ledger()["net_charged"] == 12  # judged by the emulator
    assert len(read_manifest(dest)) == 12


def test_a_rejected_spend_spends_nothing_and_a_small_one_asks_nobody(stack, emulator, tmp_path):
    emulator.reset()
    run_id = stack.trigger(
        APPROVAL_DAG,
        conf={
            "images": samples(emulator, 12, 71, 50),
            "destination": str(tmp_path / "no"),
            "approval_threshold": 10,
        },
    )
    _answer(stack, run_id, "Reject")
    assert stack.wait_run(APPROVAL_DAG, run_id, 300) == "success"
    states = stack.task_states(APPROVAL_DAG, run_id)
    assert states["approve"] == "success" and states["upscale"] == "skipped", states
    assert emulator.ledger()["net_charged"] == 0
    assert not (tmp_path / "no").exists() or not list((tmp_path / "no").glob("*.jpg"))

    small = stack.trigger(
        APPROVAL_DAG,
        conf={
            "images": samples(emulator, 3, 72, 50),
            "destination": str(tmp_path / "small"),
            "approval_threshold": 10,
        },
    )
    stack.wait_run(APPROVAL_DAG, small, 300, check=True)
    states = stack.task_states(APPROVAL_DAG, small)
    assert states["approve"] == "skipped" and states["upscale"] == "success", states
    assert emulator.ledger()["net_charged"] == 3


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="retry policies came in Airflow 3.3")
def test_the_retry_policy_fails_a_401_at_once_and_retries_a_502(stack, emulator):
    emulator.reset()
    dag_id = "testbed_retry_policy"
    emulator.configure(faults={"bad_gateway": 1.0})
    try:
        run_id = stack.trigger(dag_id)
        stack.wait_task_state(dag_id, run_id, "flaky_upscale", "up_for_retry", timeout=180)
    finally:
        emulator.configure(faults={})
    assert stack.wait_run(dag_id, run_id, 300) == "failed"  # bad_key fails the run
    bad = stack.task_instance(dag_id, run_id, "bad_key")
    flaky = stack.task_instance(dag_id, run_id, "flaky_upscale")
    assert bad["state"] == "failed" and bad["try_number"] == 1, bad  # 3 retries left, none used
    assert flaky["state"] == "success" and flaky["try_number"] >= 2, flaky
    assert emulator.ledger()["net_charged"] == 1
