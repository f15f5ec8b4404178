"""The example DAGs on the production-shaped stack: triggered through the REST API like a user does."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from airflow_provider_stablecog.emulator.imaging import write_sample_images
from airflow_provider_stablecog.utils.storage import read_manifest

from .conftest import POOL_SLOTS, samples, wait_log

pytestmark = pytest.mark.testbed

RUN_TIMEOUT = 300


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def test_scheduled_batch_manual_run_leaves_no_none_path(stack, emulator, tmp_path):
    emulator.reset()
    dag_id = "example_stablecog_scheduled_batch"
    write_sample_images(tmp_path / "incoming", sizes=["64x48.png", "48x64.jpg", "80x60.webp"], seed=5)
    dest = tmp_path / "upscaled"
    run_id = stack.trigger(dag_id, conf={"source": str(tmp_path / "incoming"), "destination": str(dest)})
    stack.wait_run(dag_id, run_id, RUN_TIMEOUT, check=True)

    summary = stack.xcom(dag_id, run_id, "record_manifest")
    assert summary["totals"] == {"upscaled": 3}
    archive = Path(summary["manifest"].removeprefix("file://"))
    assert archive.is_file() and archive.parent == dest / "manifests"
    every_path = [str(p.relative_to(dest)) for p in dest.rglob("*")]
    assert not [p for p in every_path if "None" in p], every_path
    assert len(read_manifest(dest)) == 3
    assert emulator.ledger()["net_charged"] == 3


def test_scheduled_batch_missing_source_fails_with_what_to_do(stack, tmp_path):
    dag_id = "example_stablecog_scheduled_batch"
    missing = tmp_path / "no-such-folder"
    run_id = stack.trigger(dag_id, conf={"source": str(missing), "destination": str(tmp_path / "out")})
    assert stack.wait_run(dag_id, run_id, RUN_TIMEOUT) == "failed"
    states = stack.task_states(dag_id, run_id)
    assert states["list_new_images"] == "failed", states
    log = wait_log(stack, dag_id, run_id, "list_new_images", "STABLECOG_EXAMPLE_SOURCE")
    assert "does not exist" in log and "STABLECOG_EXAMPLE_SOURCE" in log, log[-3000:]


def test_etl_enrichment(stack, emulator, tmp_path):
    """The bundled catalogue (emulator URLs on port 8765) is rewritten to this emulator's URL."""
    emulator.reset()
    dag_id = "example_stablecog_etl_enrichment"
    conf = {"destination": str(tmp_path / "images"), "output": str(tmp_path / "enriched.jsonl")}
    run_id = stack.trigger(dag_id, conf=conf)
    stack.wait_run(dag_id, run_id, RUN_TIMEOUT, check=True)

    rows = [json.loads(line) for line in (tmp_path / "enriched.jsonl").read_text().splitlines()]
    with_image = [r for r in rows if r["image_url"]]
    assert with_image and all(r["image_url"].startswith(emulator.base_url) for r in with_image)
    assert all(r.get("upscaled_path") and not r.get("upscale_error") for r in with_image), rows
    assert emulator.ledger()["net_charged"] == len({r["image_url"] for r in with_image})
    assert stack.xcom(dag_id, run_id, "load")["loaded"] == len(rows)


def test_fanout_chunks_run_concurrently_capped_by_the_pool(stack, emulator, tmp_path):
    emulator.reset()
    emulator.configure(latency=0.5)
    dag_id = "example_stablecog_credit_aware_fanout"
    images = samples(emulator, 30)
    conf = {"images": images, "chunk_size": 6, "destination": str(tmp_path / "fanout")}
    try:
        run_id = stack.trigger(dag_id, conf=conf)
        stack.wait_run(dag_id, run_id, RUN_TIMEOUT, check=True)
    finally:
        emulator.configure(latency=0.2)

    chunks = [ti for ti in stack.task_instances(dag_id, run_id) if ti["task_id"] == "upscale_chunk"]
    assert len(chunks) == 5 and {ti["state"] for ti in chunks} == {"success"}
    assert {ti["pool"] for ti in chunks} == {"stablecog"}
    assert {ti["pool_slots"] for ti in chunks} == {2}  # = max_concurrency of a chunk
    events = sorted(
        [(_ts(ti["start_date"]), 1) for ti in chunks] + [(_ts(ti["end_date"]), -1) for ti in chunks],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    # 5 pool slots, 2 per chunk: two chunks at a time, never three
    assert peak == POOL_SLOTS // 2, [(ti["map_index"], ti["start_date"], ti["end_date"]) for ti in chunks]
    assert stack.xcom(dag_id, run_id, "collect")["upscaled"] == 30
    assert emulator.ledger()["max_in_flight"] <= 4


def test_fanout_without_the_pool_fails_naming_the_pool_and_command(stack, emulator, tmp_path):
    emulator.reset()
    dag_id = "example_stablecog_credit_aware_fanout"
    conf = {
        "images": samples(emulator, 4, 70),
        "chunk_size": 2,
        "destination": str(tmp_path / "fanout"),
        "pool_check_timeout": 10,
    }
    stack.delete_pool("stablecog")
    try:
        run_id = stack.trigger(dag_id, conf=conf)
        stack.wait_task_state(dag_id, run_id, "check_pool", ("failed", "success"), timeout=RUN_TIMEOUT)
        states = stack.task_states(dag_id, run_id)
        assert states["check_pool"] == "failed", states
        assert {s for k, s in states.items() if k.startswith("upscale_chunk")} == {"scheduled"}, states
        log = wait_log(stack, dag_id, run_id, "check_pool", "airflow pools set stablecog 5")
        assert "airflow pools set stablecog 5" in log and "'stablecog'" in log, log[-3000:]
    finally:
        stack.set_pool("stablecog", POOL_SLOTS, "Stablecog plan")
    # creating the pool releases the waiting chunks; the run ends failed because check_pool failed
    assert stack.wait_run(dag_id, run_id, RUN_TIMEOUT) == "failed"
    states = stack.task_states(dag_id, run_id)
    assert {s for k, s in states.items() if k.startswith("upscale_chunk")} == {"success"}, states


def test_asset_producer_triggers_the_consumer(stack, emulator):
    emulator.reset()
    producer, consumer = "example_stablecog_asset_producer", "example_stablecog_asset_consumer"
    stack.wait_for_dag(consumer)
    run_id = stack.trigger(producer)
    stack.wait_run(producer, run_id, RUN_TIMEOUT, check=True)
    destination = Path(stack.env["STABLECOG_EXAMPLE_ASSET_DESTINATION"])
    assert len(read_manifest(destination)) == 4
    assert len(list(destination.glob("*.jpg"))) == 4

    def consumer_run():
        runs = stack.api("GET", f"/api/v2/dags/{consumer}/dagRuns")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done[0] if done else None

    deadline = time.monotonic() + RUN_TIMEOUT
    while (run := consumer_run()) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert run is not None, stack.diagnostics()
    assert run["run_type"] == "asset_triggered", run
    assert run["state"] == "success", stack.diagnostics(consumer, run["dag_run_id"])
    report = stack.xcom(consumer, run["dag_run_id"], "report")
    assert report == {"events": 1, "upscaled": 4, "skipped": 0, "failed": 0, "images_in_destination": 4}


def test_scheduled_batch_into_s3_destination(stack, emulator, s3_server, testbed_bucket, tmp_path):
    """``destination="s3://bucket/prefix"`` through ObjectStoragePath and the aws_default connection."""
    emulator.reset()
    dag_id = "example_stablecog_scheduled_batch"
    write_sample_images(tmp_path / "incoming", sizes=["64x48.png", "48x64.jpg"], seed=7)
    dest = f"s3://{testbed_bucket}/batch"
    run_id = stack.trigger(dag_id, conf={"source": str(tmp_path / "incoming"), "destination": dest})
    stack.wait_run(dag_id, run_id, RUN_TIMEOUT, check=True)
    keys = s3_server.list_keys(testbed_bucket, "batch/")
    assert "batch/manifest.jsonl" in keys
    assert len([k for k in keys if k.endswith(".jpg")]) == 2, keys
    assert [k for k in keys if k.startswith("batch/manifests/") and "None" not in k], keys
    assert not [k for k in keys if k.endswith(".part")], keys
