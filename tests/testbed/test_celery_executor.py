"""The fan-out on CeleryExecutor with two workers: one account shared by every chunk on every worker.

Judged by the emulator's ledger (never by the operator's report): the account's requests in flight
across both workers stay within plan + 1 (the pool), credits == images, the reserve holds across
chunks running at once, and a worker lost mid-run costs nothing already answered.
"""

from __future__ import annotations

import time

import pytest

from airflow_provider_stablecog.utils.storage import read_manifest

pytestmark = pytest.mark.testbed

DAG_ID = "example_stablecog_credit_aware_fanout"
PLAN = 4
IMAGES = 60
CHUNK = 12  # 5 chunks of 1 upscale each: all of them at once in the pool of plan + 1 = 5


def _images(emulator, tag: int) -> list[str]:
    return [emulator.sample_url(f"{64 + i}x48.png", seed=tag) for i in range(IMAGES)]


def _chunks(stack, run_id: str) -> list[dict]:
    return [t for t in stack.task_instances(DAG_ID, run_id) if t["task_id"] == "upscale_chunk"]


def test_chunks_on_two_workers_share_the_plan_and_keep_the_reserve(celery_stack, emulator, tmp_path):
    """Exactly enough credits for the list + the reserve: every chunk, on either worker, delivers
    its images; together they never have more than plan + 1 upscales in flight and end at the reserve."""
    reserve = 7
    emulator.reset()
    emulator.configure(latency=0.2)
    emulator.set_balance(IMAGES + reserve)
    dest = tmp_path / "fanout"
    conf = {"images": _images(emulator, 1), "chunk_size": CHUNK, "destination": str(dest), "reserve": reserve}
    run_id = celery_stack.trigger(DAG_ID, conf=conf)
    celery_stack.wait_run(DAG_ID, run_id, 300, check=True)
    ledger = emulator.ledger()
    chunks = _chunks(celery_stack, run_id)
    assert len(chunks) == IMAGES // CHUNK and {t["state"] for t in chunks} == {"success"}
    # the account's requests open at the server (held + running), not only the ones it runs
    assert 1 < ledger["max_requests_open"] <= PLAN + 1, ledger["max_requests_open"]
    assert ledger["net_charged"] == IMAGES and ledger["balance"] == reserve, ledger
    assert len(list(dest.glob("*.jpg"))) == IMAGES
    assert celery_stack.xcom(DAG_ID, run_id, "collect")["upscaled"] == IMAGES
    plan = celery_stack.xcom(DAG_ID, run_id, "enough_credits_for_all", key="credit_plan")
    assert plan == {"remaining": IMAGES + reserve, "needed": IMAGES, "reserve": reserve}


def test_a_worker_lost_mid_run_costs_nothing_already_answered(celery_stack, emulator, tmp_path):
    """SIGKILL one whole worker (worker, pool, supervisors, task processes) while its chunks upscale:
    the scheduler fails them after the heartbeat timeout, Airflow retries them on the other worker,
    every image is delivered, and the only extra charges are requests in flight at the kill, each
    reported by the operator as possibly double-charged."""
    emulator.reset()
    emulator.configure(latency=1.0)  # each chunk works ~12 s: the kill lands mid-chunk
    dest = tmp_path / "kill"
    try:
        run_id = celery_stack.trigger(
            DAG_ID, conf={"images": _images(emulator, 2), "chunk_size": CHUNK, "destination": str(dest)}
        )
        deadline = time.monotonic() + 240
        while emulator.ledger()["charged"] < 15:
            assert time.monotonic() < deadline, celery_stack.diagnostics(DAG_ID, run_id)
            time.sleep(0.2)
        running: dict[str, list[int]] = {}
        for ti in _chunks(celery_stack, run_id):
            worker = (
                celery_stack.worker_of_pid(int(ti["pid"]))
                if ti["state"] == "running" and ti.get("pid")
                else None
            )
            if worker:
                running.setdefault(worker, []).append(ti["map_index"])
        assert running, f"no chunk found running on a worker: {_chunks(celery_stack, run_id)}"
        victim = max(running, key=lambda w: len(running[w]))
        before = emulator.ledger()
        celery_stack.kill_worker(victim)
        in_flight = max(before["requests_open"], emulator.ledger()["requests_open"])
        print(
            f"killed {victim} running chunks {running[victim]} at {before['charged']} charges, {in_flight} in flight"
        )
        celery_stack.wait_run(DAG_ID, run_id, 400, check=True)
    finally:
        emulator.configure(latency=0.2)
    survivor = [w for w in celery_stack.worker_names if w != victim]
    assert not celery_stack.services[victim].alive() and all(
        celery_stack.services[w].alive() for w in survivor
    )
    chunks = {t["map_index"]: t for t in _chunks(celery_stack, run_id)}
    assert all(chunks[i]["try_number"] == 2 for i in running[victim]), chunks  # retried on the survivor
    ledger = emulator.ledger()
    extra = ledger["net_charged"] - IMAGES
    reported = sum(
        int(
            celery_stack.xcom(DAG_ID, run_id, "upscale_chunk", key="summary", map_index=i)[
                "possibly_double_charged"
            ]
        )
        for i in chunks
    )
    facts = f"net_charged={ledger['net_charged']}, in flight at the kill={in_flight}, reported={reported}"
    assert ledger["max_requests_open"] <= PLAN + 1, facts
    assert 0 <= extra <= in_flight, facts  # nothing answered was paid again
    # every possible double charge is reported; a killed chunk (1 upscale at a time, 1 more queued)
    # had at most 2 items recorded as sent without an answer
    assert extra <= reported <= 2 * len(running[victim]), facts
    assert all(count <= 2 for count in ledger["charges_by_input"].values()), facts
    manifest = read_manifest(dest)
    assert len(manifest) == IMAGES and all(r.get("path") for r in manifest.values()), facts
    assert len(list(dest.glob("*.jpg"))) == IMAGES, facts
