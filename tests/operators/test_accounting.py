"""Exact credit accounting, judged by the emulator's ledger (never by the operator's own report).

Answers arrive out of charge order (``latency_jitter``), the server limits the rate, and answers
are lost after the charge: the reserve is still a floor, free items still go at balance 0, a 429
storm fails nothing, and every lost answer is reported as possibly double-charged.
"""

from __future__ import annotations

import os

import pytest

from airflow_provider_stablecog.compat import AirflowException
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from tests.operators.conftest import MemoryStateStore, make_context


def _run(op: UpscaleOperator, store: MemoryStateStore | None = None) -> list[dict]:
    return op.execute(make_context(store))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("jitter", [0.05, 0.2, 0.5])
def test_the_reserve_is_a_floor_in_every_answer_order(emu, jitter, seed):
    emu.set_balance(30)
    emu.configure(latency=0.05, latency_jitter=jitter, fault_seed=seed)
    inputs = [emu.sample_url(f"{20 + i}x{30 + seed}.png") for i in range(40)]
    op = UpscaleOperator(
        task_id="u", inputs=inputs, credit_reserve=20, max_concurrency=5, progress_interval=0
    )
    with pytest.raises(AirflowException, match="credit_reserve"):
        _run(op)
    ledger = emu.ledger()
    assert ledger["balance"] >= 20, f"the reserve was crossed: balance {ledger['balance']}"
    assert ledger["net_charged"] == 10  # exactly down to the floor, never past it
    assert op.summary["credits_after"] == ledger["balance"]  # "credits left" is the emulator's
    assert op.summary["credits_charged_this_try"] == ledger["net_charged"]


def test_free_output_ids_are_delivered_at_balance_zero(emu):
    free = emu.output_ids(upscaled=True)[:3]
    paid = emu.sample_url("26x26.png")
    emu.set_balance(0)
    op = UpscaleOperator(task_id="u", inputs=[*free, paid], progress_interval=0, fail_on_not_started=False)
    records = _run(op)
    by_input = {r["input"]: r for r in records}
    assert all(by_input[i]["status"] == "upscaled" for i in free), records
    assert by_input[paid]["status"] == "not_started" and by_input[paid]["error"] == "insufficient_credits"
    assert emu.ledger()["net_charged"] == 0 and emu.ledger()["free_answers"] == len(free)


def test_the_dry_run_and_the_operator_agree_on_free_items(emu):
    free = emu.output_ids(upscaled=True)[:2]
    emu.set_balance(0)
    plan = UpscaleOperator(task_id="u", inputs=free, dry_run=True, progress_interval=0).execute(
        make_context()
    )
    assert plan["credits_needed"] == 0 and plan["enough_credits"] is True
    records = _run(UpscaleOperator(task_id="u", inputs=free, progress_interval=0))
    assert {r["status"] for r in records} == {"upscaled"}


def test_a_429_storm_slows_the_batch_and_fails_nothing(emu, monkeypatch):
    emu.configure(rate_limit=2, latency=0.05)
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT", emu.connection_json(plan_concurrency=4)
    )  # default client rate
    inputs = [emu.sample_url(f"{20 + i}x27.png") for i in range(40)]
    records = _run(UpscaleOperator(task_id="u", inputs=inputs, progress_interval=0))
    assert [r["status"] for r in records] == ["upscaled"] * 40
    ledger = emu.ledger()
    assert ledger["net_charged"] == 40 and ledger["rate_limited"] >= 0


def test_every_lost_answer_is_reported_as_possibly_double_charged(emu, tmp_path):
    emu.configure(faults={"reset_after_charge": 0.2}, fault_seed=5, latency=0.05)
    os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"] = emu.connection_json(
        plan_concurrency=4, rate_limit=0, retry_backoff=0.05
    )
    inputs = [emu.sample_url(f"{20 + i}x28.png") for i in range(40)]
    op = UpscaleOperator(
        task_id="u", inputs=inputs, destination=str(tmp_path), progress_interval=0, max_failed_ratio=1.0
    )
    records = _run(op)
    ledger = emu.ledger()
    assert ledger["responses_lost"] > 0
    reported = sum(r.get("possibly_double_charged", 0) for r in records)
    gave_up = [r for r in records if r["status"] == "failed"]
    assert all(r["error"] == "response_lost" for r in gave_up)
    # each lost answer is either resent (reported possibly double-charged) or given up (reported failed)
    assert reported + len(gave_up) == ledger["responses_lost"]
    assert op.summary["possibly_double_charged"] == reported
    assert ledger["net_charged"] == (40 - len(gave_up)) + ledger["responses_lost"]
    delivered = [r for r in records if r["status"] == "upscaled"]
    assert len(delivered) == 40 - len(gave_up)


def test_not_resending_leaves_lost_answers_to_the_user(emu, tmp_path):
    emu.configure(faults={"reset_after_charge": 0.3}, fault_seed=9, latency=0.05)
    os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"] = emu.connection_json(plan_concurrency=4, rate_limit=0)
    inputs = [emu.sample_url(f"{20 + i}x29.png") for i in range(20)]
    op = UpscaleOperator(
        task_id="u",
        inputs=inputs,
        destination=str(tmp_path),
        progress_interval=0,
        max_failed_ratio=1.0,
        resend_possibly_charged=False,
    )
    records = _run(op)
    ledger = emu.ledger()
    lost = [r for r in records if r.get("error") == "response_lost"]
    assert len(lost) == ledger["responses_lost"] > 0
    assert ledger["net_charged"] == 20  # charged once each, never twice
    assert sum(r.get("possibly_double_charged", 0) for r in records) == 0


def test_spend_across_tries_is_read_from_the_ledger(emu, tmp_path):
    inputs = [emu.sample_url(f"{20 + i}x31.png") for i in range(10)]
    store = MemoryStateStore()
    emu.set_balance(6)
    first = UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path), progress_interval=0)
    with pytest.raises(AirflowException, match="not started"):
        _run(first, store)
    emu.add_credits(10)
    retry = UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path), progress_interval=0)
    _run(retry, store)
    assert retry.summary["credits_charged_earlier"] == 6 and retry.summary["credits_charged_this_try"] == 4
    assert emu.ledger()["net_charged"] == 10
    from airflow_provider_stablecog.utils.storage import read_manifest

    assert sum(r["credits_charged"] for r in read_manifest(tmp_path).values()) == 10  # per item, all tries
